"""Backport of an open vLLM fix to the bundled vLLM 0.24.0: prompt log-probs under draft-model speculation.

Why: vLLM's V1 model runner runs a padded GPU drafter (draft model, EAGLE, MTP) *before* its bookkeeping,
and the bookkeeping computes prompt log-probs from the target model's hidden states. Those live in a
CUDA-graph output buffer, and all graphs share one memory pool, so the drafter's graph replay can overwrite
them: the prompt log-probs of some requests come out of the draft model's activations, with no error
(vllm-project/vllm#53488, open; fix proposed in #53520, not in any release). Generation is unaffected
(sampling happens before the drafter). lm-eval's loglikelihood tasks read exactly these log-probs, so on an
H100 (2026-11-26, docs/results/h100-2026-11-26-15) `draft`'s fx_ppl came out +1.08 word perplexity worse
in one run of seven and the gate rejected a lossless variant. bench/spec_logprobs.py reproduces it.

The change: while any scheduled request wants prompt log-probs, bookkeeping reads a copy of the hidden
states taken before the drafter runs. Nothing else changes (one device copy of at most the scheduled
tokens' hidden states, only in steps that carry a prompt-log-prob request).

usage: python3 gpu/patch_vllm.py SITE [--revert]   (install-bundle.sh runs it; idempotent)
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

FILE = "vllm/v1/worker/gpu_model_runner.py"
MARK = "# evalgate backport of vllm-project/vllm#53520"
# (anchor in vLLM 0.24.0's source, its replacement): each anchor must occur exactly once
EDITS = [
    ("        spec_config = self.speculative_config\n        propose_drafts_after_bookkeeping = False\n",
     f"        {MARK}: the padded drafter below can overwrite the\n"
     "        # CUDA-graph buffer that holds hidden_states; prompt logprobs read a copy taken before it runs.\n"
     "        prompt_hidden_states = hidden_states\n"
     "        if self.num_prompt_logprobs and isinstance(hidden_states, torch.Tensor):\n"
     "            prompt_hidden_states = hidden_states[: scheduler_output.total_num_scheduled_tokens].clone()\n"
     "        spec_config = self.speculative_config\n        propose_drafts_after_bookkeeping = False\n"),
    ("                logits,\n                hidden_states,\n                scheduler_output.total_num_scheduled_tokens,\n",
     "                logits,\n                prompt_hidden_states,\n"
     "                scheduler_output.total_num_scheduled_tokens,\n"),
]


class PatchError(Exception):
    pass


def patched(text: str) -> str:
    """vLLM's source with the backport applied; PatchError if this is not the source it was written for."""
    if MARK in text:
        return text
    for old, new in EDITS:
        n = text.count(old)
        if n != 1:
            raise PatchError(f"{FILE}: expected the anchor once, found it {n} times (not vLLM 0.24.0?): "
                             f"{old.splitlines()[0].strip()!r}")
        text = text.replace(old, new)
    return text


def reverted(text: str) -> str:
    if MARK not in text:
        return text
    for old, new in reversed(EDITS):
        text = text.replace(new, old)
    if MARK in text:
        raise PatchError(f"{FILE}: the backport is there but could not be taken out")
    return text


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("site", help="the folder vllm is installed in (install-bundle.sh's TARGET)")
    ap.add_argument("--revert", action="store_true", help="restore vLLM's own code (bench/spec_logprobs.py's A/B)")
    a = ap.parse_args(argv)
    path = Path(a.site) / FILE
    if not path.is_file():
        print(f"patch_vllm: no {FILE} under {a.site}", file=sys.stderr)
        return 1
    text = path.read_text()
    try:
        new = reverted(text) if a.revert else patched(text)
    except PatchError as e:
        print(f"patch_vllm: {e}", file=sys.stderr)
        return 1
    if new != text:
        path.write_text(new)
    print(f"patch_vllm: {'reverted' if a.revert else 'applied'} ({path})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
