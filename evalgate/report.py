"""The report: a markdown table of every variant (speed, quality, verdict), the best accepted variant
named, and a PNG of quality against throughput."""
from __future__ import annotations

from pathlib import Path

from evalgate.config import BASELINE
from evalgate.metrics import gate_metric_key

SPEED = [("output_throughput", "out tok/s", "{:.1f}"), ("median_ttft_ms", "TTFT p50 ms", "{:.2f}"),
         ("median_tpot_ms", "TPOT p50 ms", "{:.2f}"), ("p99_e2el_ms", "E2EL p99 ms", "{:.1f}"),
         ("mem_peak_mb", "peak mem MB", "{:.0f}")]
FIDELITY = [("fidelity/kl_mean", "KL", "{:.2g}"), ("fidelity/top1_agreement", "top-1 agree", "{:.3f}"),
            ("fidelity/answer_flip_rate", "flips", "{:.3f}")]


def _fmt(v, f: str) -> str:
    return "–" if v is None else f.format(v)


def quality_keys(cfg) -> list[str]:
    """Gated metrics first, then the remaining headline metric of each task."""
    keys = [gate_metric_key(t.metric) for t in cfg.thresholds]
    return list(dict.fromkeys(keys))


def rows(cfg, results: dict, gate: dict) -> list[dict]:
    base = results.get(gate["baseline"], {}).get("metrics", {})
    out = []
    for name, v in gate["variants"].items():
        m = {**results.get(name, {}).get("metrics", {}), **gate.get("fidelity", {}).get(name, {})}
        thr, bthr = m.get("output_throughput"), base.get("output_throughput")
        out.append({"variant": name, "verdict": v["verdict"], "reason": v["reason"],
                    "speedup_pct": 100 * (thr / bthr - 1) if thr and bthr else None,
                    **{k: m.get(k) for k, _, _ in SPEED + FIDELITY}, **{k: m.get(k) for k in quality_keys(cfg)}})
    return out


def markdown(cfg, table: list[dict], gate: dict, phase_times: dict | None = None) -> str:
    q = quality_keys(cfg)
    head = ["variant", "verdict", *[h for _, h, _ in SPEED], "Δ tok/s %", *[k.removeprefix("lmeval/") for k in q],
            *[h for _, h, _ in FIDELITY]]
    lines = [f"# Variant report: {cfg.model.id} on `{cfg.engine['name']}`", "",
             f"**Best accepted variant: `{gate['best']}`**" if gate["best"] else "**No variant was accepted.**",
             "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in table:
        cells = [f"`{r['variant']}`", "✅ accept" if r["verdict"] == "accept" else "❌ reject",
                 *[_fmt(r[k], f) for k, _, f in SPEED], _fmt(r["speedup_pct"], "{:+.1f}"),
                 *[_fmt(r[k], "{:.4f}") for k in q], *[_fmt(r[k], f) for k, _, f in FIDELITY]]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "## Verdicts", "", "Each line: Δ = quality loss against the baseline (positive = worse), its "
              "one-sided confidence bounds, the margin δ, the paired sample count n, and the minimum detectable "
              "effect at that n.", ""]
    for r in table:
        checks = gate["variants"][r["variant"]]["checks"]
        lines.append(f"- `{r['variant']}`: **{r['verdict']}** — {r['reason'] if not checks else ''}".rstrip(" —"))
        lines += [f"  - {'✅' if c['passed'] else '❌'} {c['reason']}" for c in checks]
        early = gate["variants"][r["variant"]].get("early_rejection")
        if early:
            saved = "" if early.get("eval_s_saved") is None else f", {early['eval_s_saved']:.1f} s saved against the baseline's full eval"
            lines.append(f"  - ⏹ stopped early at look {early['look']} of {early['looks']} (α = {early['alpha_per_look']:g} "
                         f"per look): {early['docs_evaluated']} of {early['docs_total']} docs evaluated in "
                         f"{early['eval_s']:.1f} s{saved}")
    lines += ["", f"Baseline: `{gate['baseline']}`. Throughput is the mean over "
              f"{cfg.workload['repeats']} repeats of {cfg.workload['num_prompts']} requests of "
              f"{cfg.workload['output_len']} output tokens each"
              + (f", at concurrency {cfg.workload.get('headline_concurrency', cfg.workload.get('concurrency', [1])[-1])}"
                 if cfg.engine["name"] != "hf" else "") + ". Peak memory is the process RSS on `hf` and the GPU "
              "memory in use on `vllm` (which pre-allocates `gpu_memory_utilization` of the card: compare "
              "`kv_cache_tokens` there)."]
    if phase_times:
        lines += ["", "## Time per phase (s)", "", "| variant | " + " | ".join(next(iter(phase_times.values()))) + " |",
                  "|---|" + "---|" * len(next(iter(phase_times.values())))]
        lines += [f"| `{n}` | " + " | ".join(f"{x:.1f}" for x in t.values()) + " |" for n, t in phase_times.items()]
    return "\n".join(lines) + "\n"


def pareto_png(cfg, table: list[dict], path: Path) -> None:
    """Quality (first gated metric) against output throughput, accepted in green, rejected in red."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    q = quality_keys(cfg)
    qk = q[0] if q else None
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for r in table:
        x, y = r.get("output_throughput"), r.get(qk) if qk else None
        if x is None or y is None:
            continue
        ax.scatter(x, y, s=60, c="tab:green" if r["verdict"] == "accept" else "tab:red",
                   marker="*" if r["variant"] == BASELINE else "o", zorder=3)
        ax.annotate(r["variant"], (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
    ax.set_xlabel("output throughput (tok/s)")
    ax.set_ylabel(qk.removeprefix("lmeval/") if qk else "quality")
    ax.set_title("quality vs throughput (green: accepted, red: rejected, ★ baseline)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
