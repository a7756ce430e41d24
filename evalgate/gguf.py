"""llama.cpp's toolchain for the `llamacpp` engine: its tools built from PyPI's llama-cpp-python sdist,
HF → GGUF conversion, quantization, the Ollama Modelfile, and what a GGUF file holds.

  build       `python -m evalgate.gguf build` (`make llamacpp`): llama-server, llama-quantize, llama-bench and
              llama-perplexity, compiled with cmake from the llama.cpp tree that llama-cpp-python's sdist
              vendors (one pinned version, `VERSION`), into a cache outside the repository keyed by that
              version, the cmake flags and the CPU, so every clone and every test on this machine shares one
              build (the sdist: `pip download`, or a local file in $LLAMA_CPP_PYTHON_SDIST for an air-gapped host);
  convert     the vendored `convert_hf_to_gguf.py` (HF checkpoint → GGUF f16), with the pre-tokenizers
              registered below; a tokenizer it does not know is one line naming the fix (`ConversionError`);
  quantize    `llama-quantize` (f16 → Q8_0, Q4_K_M, Q2_K…), with the tensor types it really wrote;
  modelfile   an Ollama Modelfile next to the GGUF.

Nothing here is a re-implementation of llama.cpp: it calls llama.cpp's own programs and scripts.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

VERSION = "0.3.36"   # llama-cpp-python; its sdist vendors llama.cpp (and convert_hf_to_gguf.py, gguf-py)
TOOLS = ("llama-server", "llama-quantize", "llama-bench", "llama-perplexity")
# Only what the four tools need, statically linked (the bin folder is self-contained); no web UI (the
# prebuilt one would be downloaded at build time, the source one needs npm), no curl/openssl (local files only).
# Optimisation where the time goes: ggml (the tensor kernels: every token's compute) at Release's -O3, the
# rest (libllama, the server, argument parsing, chat templates, the multimodal library the server links) at
# -O1. ggml is 8 % of the compile time, the rest 92 %, and gcc compiles those files in half the time at -O1
# (arg.cpp 38.5 → 20.9 s, clip.cpp 37.9 → 13.9 s, llama-model.cpp 23.0 → 11.9 s, server-context.cpp
# 28.8 → 18.9 s on this 2-core machine). The whole build: 672.4 s → 462.8 s (compilers' CPU 1,301 → 888 s),
# with no speed difference above this machine's noise in llama-bench or through llama-server
# (bench/llamacpp_build.py, docs/results/cpu-llamacpp-build-2026-11-26). ggml gets its -O3 back through
# cmake's per-project include hook, which runs inside ggml's own project() and so sets its flags only.
# Without AMX: GGML_NATIVE on a CPU that reports AMX (a Sapphire Rapids VM here, 2026-11-26) compiles ggml's
# AMX kernels for Q8_0 and friends, and on that VM the first `tilezero` in a worker thread died with SIGILL
# (llama-server exited with -4 while warming up a Q8_0 model; gdb: tinygemm_kernel_amx<block_q8_0>), so
# every llama.cpp test failed there. The AVX-512 kernels serve those types instead.
NO_AMX = "-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
GGML_FLAGS = (f'set(CMAKE_C_FLAGS_RELEASE "-O3 -DNDEBUG {NO_AMX}")\n'
              f'set(CMAKE_CXX_FLAGS_RELEASE "-O3 -DNDEBUG {NO_AMX}")\n')
CMAKE_FLAGS = ("-DCMAKE_BUILD_TYPE=Release", "-DBUILD_SHARED_LIBS=OFF", "-DGGML_NATIVE=ON",
               "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_TOOLS=ON",
               "-DLLAMA_BUILD_SERVER=ON", "-DLLAMA_CURL=OFF", "-DLLAMA_OPENSSL=OFF", "-DLLAMA_BUILD_UI=OFF",
               "-DLLAMA_USE_PREBUILT_UI=OFF", "-DCMAKE_C_FLAGS_RELEASE=-O1 -DNDEBUG",
               "-DCMAKE_CXX_FLAGS_RELEASE=-O1 -DNDEBUG")


class ConversionError(RuntimeError):
    """A model llama.cpp's converter refuses; the message is one line that names the fix."""


class ToolsMissing(RuntimeError):
    """llama.cpp's tools are not built here (and building was not allowed)."""


# --- the build ------------------------------------------------------------------------------------------

def _cpu_key() -> str:
    """GGML_NATIVE compiles for this CPU: a build is only reused on a CPU with the same flags."""
    flags = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = " ".join(sorted(line.split(":", 1)[1].split()))
                break
    return flags or platform.processor() or platform.machine()


def home(options: dict | None = None) -> Path:
    """Where this version's tools live: $EVALGATE_LLAMACPP_HOME or engine `build.home` (default
    ~/.cache/evalgate/llama.cpp), one folder per (version, cmake flags, CPU)."""
    opts = (options or {}).get("build") or {}
    version = str(opts.get("version", VERSION))
    base = os.environ.get("EVALGATE_LLAMACPP_HOME") or opts.get("home") or "~/.cache/evalgate/llama.cpp"
    key = hashlib.sha256("\n".join([version, *CMAKE_FLAGS, GGML_FLAGS, _cpu_key()]).encode()).hexdigest()[:10]
    return Path(base).expanduser() / f"{version}-{key}"


@dataclass(frozen=True)
class Tools:
    """A finished build: the vendored llama.cpp tree (`src`: convert_hf_to_gguf.py, gguf-py) and `bin`."""
    root: Path

    @property
    def src(self) -> Path:
        return self.root / "src"

    @property
    def bin(self) -> Path:
        return self.root / "build" / "bin"

    def __getitem__(self, tool: str) -> str:
        return str(self.bin / tool)

    @property
    def info(self) -> dict:
        f = self.root / "build.json"
        return json.loads(f.read_text()) if f.exists() else {}


def _ready(root: Path) -> bool:
    return (root / "build.json").exists() and all((root / "build" / "bin" / t).exists() for t in TOOLS)


def tools(options: dict | None = None, build: bool = True, log=print) -> Tools:
    """The built tools; builds them first (once per machine, under a lock) unless `build` is False."""
    root = home(options)
    if _ready(root):
        return Tools(root)
    if not build:
        raise ToolsMissing(f"llama.cpp tools are not built in {root}: run `make llamacpp` "
                           f"(python -m evalgate.gguf build)")
    root.parent.mkdir(parents=True, exist_ok=True)
    import fcntl

    with open(root.parent / f"{root.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)          # a second process waits for the first one's build
        if not _ready(root):
            _build(root, options or {}, log)
    return Tools(root)


def _sdist(version: str, dest: Path, log) -> Path:
    local = os.environ.get("LLAMA_CPP_PYTHON_SDIST")
    if local:
        return Path(local)
    dest.mkdir(parents=True, exist_ok=True)
    found = sorted(dest.glob(f"llama_cpp_python-{version}.tar.gz"))
    if found:
        return found[0]
    log(f"llama.cpp: pip download llama-cpp-python=={version} (sdist)")
    p = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                        f"llama-cpp-python=={version}", "-d", str(dest)], capture_output=True, text=True)
    found = sorted(dest.glob(f"llama_cpp_python-{version}.tar.gz"))
    if p.returncode or not found:
        tail = (p.stderr or p.stdout).strip().splitlines()[-1:] or ["no output"]
        raise ToolsMissing(f"llama.cpp: cannot download llama-cpp-python=={version} ({tail[0]}); put the sdist's "
                           "path in $LLAMA_CPP_PYTHON_SDIST")
    return found[0]


def _extract(sdist: Path, dest: Path) -> None:
    """Only the vendored llama.cpp tree (vendor/llama.cpp/…) of the sdist, into `dest`."""
    with tarfile.open(sdist) as tar:
        members = []
        for m in tar.getmembers():
            parts = Path(m.name).parts
            if len(parts) > 3 and parts[1:3] == ("vendor", "llama.cpp"):
                m.name = str(Path(*parts[3:]))
                members.append(m)
        if not members:
            raise ToolsMissing(f"llama.cpp: {sdist} holds no vendor/llama.cpp")
        tar.extractall(dest, members=members, filter="data")


def configure_flags(root: Path) -> list[str]:
    """cmake's flags for a build in `root`, with ggml's own optimisation level in a file there."""
    (root / "ggml-flags.cmake").write_text(GGML_FLAGS)
    return [*CMAKE_FLAGS, f"-DCMAKE_PROJECT_ggml_INCLUDE={root / 'ggml-flags.cmake'}"]


def _build(root: Path, options: dict, log) -> None:
    opts = options.get("build") or {}
    version = str(opts.get("version", VERSION))
    t0 = time.perf_counter()
    shutil.rmtree(root / "src", ignore_errors=True)
    shutil.rmtree(root / "build", ignore_errors=True)
    root.mkdir(parents=True, exist_ok=True)
    _extract(_sdist(version, root.parent / "sdist", log), root / "src")
    if shutil.which("cmake") is None:
        raise ToolsMissing("llama.cpp: cmake is not installed (apt-get install cmake, or pip install cmake)")
    jobs = int(opts.get("jobs") or os.cpu_count() or 2)
    gen = ["-G", "Ninja"] if shutil.which("ninja") else []
    blog = root / "build.log"
    import resource

    cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    log(f"llama.cpp: building {', '.join(TOOLS)} from llama-cpp-python {version} with {jobs} jobs "
        f"(once per machine; ≈ 8 min on 2 cores; log: {blog})")
    flags = configure_flags(root)
    with open(blog, "w") as f:
        for cmd in (["cmake", "-S", str(root / "src"), "-B", str(root / "build"), *gen, *flags],
                    ["cmake", "--build", str(root / "build"), "--target", *TOOLS, "-j", str(jobs)]):
            f.write("$ " + " ".join(cmd) + "\n")
            f.flush()
            if subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT).returncode:
                tail = blog.read_text(errors="replace").strip().splitlines()[-5:]
                raise ToolsMissing("llama.cpp build failed:\n" + "\n".join(tail))
    seconds = time.perf_counter() - t0
    cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_s = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)   # compilers' CPU time: load-independent
    ver = subprocess.run([str(root / "build" / "bin" / "llama-server"), "--version"], capture_output=True, text=True)
    info = {"llama_cpp_python": version, "llama_cpp": (ver.stdout + ver.stderr).strip().splitlines()[:2],
            "cmake_flags": flags, "ggml_flags": GGML_FLAGS.splitlines(), "jobs": jobs, "build_seconds": round(seconds, 1),
            "build_cpu_seconds": round(cpu_s, 1), "load_average": [round(x, 2) for x in os.getloadavg()],
            "machine": platform.machine(), "cpus": os.cpu_count(), "date": time.strftime("%Y-%m-%d")}
    (root / "build.json").write_text(json.dumps(info, indent=1) + "\n")
    log(f"llama.cpp: built in {seconds:.0f} s into {root / 'build' / 'bin'}")


# --- conversion -----------------------------------------------------------------------------------------

# Registered pre-tokenizers: an HF `tokenizer.json` pre_tokenizer (matched as a subset of its JSON) and the
# llama.cpp pre-tokenizer (src/llama-vocab.cpp) that splits text the same way. llama.cpp's converter
# recognises a BPE pre-tokenizer only by the hash of a known model's token ids (convert_hf_to_gguf_update.py
# downloads those models to make the list), so a tokenizer trained here — the fixture's — is never in it,
# although its split is a known one. Hand-written for that reason: the structure decides, not a hash.
PRE_TOKENIZERS: tuple[tuple[dict, str], ...] = (
    # every digit alone, then GPT-2's byte-level regex: SmolLM's and StarCoder's split (llama.cpp `smollm`:
    # regexes "\p{N}" then GPT-2's; no added BOS); the fixture's tokenizer (evalgate/toymodel/tokenizer.py)
    ({"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": True},
                                            {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True}]},
     "smollm"),
)


def _matches(value, pattern) -> bool:
    if isinstance(pattern, dict):
        return isinstance(value, dict) and all(k in value and _matches(value[k], p) for k, p in pattern.items())
    if isinstance(pattern, list):
        return isinstance(value, list) and len(value) == len(pattern) and all(map(_matches, value, pattern))
    return value == pattern


def registered_pre_tokenizer(model_dir: Path) -> str | None:
    """The llama.cpp pre-tokenizer registered for this model's byte-level BPE tokenizer, if any."""
    f = Path(model_dir) / "tokenizer.json"
    if not f.exists():
        return None
    tj = json.loads(f.read_text())
    if tj.get("normalizer") or (tj.get("model") or {}).get("type") != "BPE":
        return None
    return next((name for pattern, name in PRE_TOKENIZERS if _matches(tj.get("pre_tokenizer"), pattern)), None)


def conversion_error(output: str, model_dir: str) -> str:
    """The converter's failure as one line naming the fix."""
    if "BPE pre-tokenizer was not recognized" in output:
        h = re.search(r"chkhsh:\s*([0-9a-f]{64})", output)
        return (f"{model_dir}: llama.cpp's convert_hf_to_gguf.py does not recognise this BPE tokenizer's "
                f"pre-tokenizer{f' (chkhsh {h.group(1)[:12]}…)' if h else ''}; fix: give the model a SentencePiece "
                "tokenizer.model, or register its tokenizer.json pre_tokenizer in evalgate.gguf.PRE_TOKENIZERS "
                "(for a published model: convert_hf_to_gguf_update.py upstream)")
    if "No module named 'sentencepiece'" in output:
        return f"{model_dir}: llama.cpp's converter needs the sentencepiece package (pip install sentencepiece)"
    if m := re.search(r"Model (\S+) is not supported", output):
        return f"{model_dir}: llama.cpp's converter does not support the architecture {m.group(1)}"
    last = [ln for ln in output.strip().splitlines() if ln.strip()][-1:] or ["no output"]
    return f"{model_dir}: convert_hf_to_gguf.py failed: {last[0].strip()[:300]}"


def convert(model_dir: str | Path, out: Path, tl: Tools, outtype: str = "f16") -> dict:
    """HF checkpoint → GGUF with the vendored converter, in its own process (it imports torch and
    patches nothing in ours); `ConversionError` with one line on failure."""
    out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "evalgate.gguf", "convert", str(tl.src), str(model_dir), str(out), outtype],
                       capture_output=True, text=True, env={**os.environ, "NO_LOCAL_GGUF": ""})
    if p.returncode or not out.exists():
        raise ConversionError(conversion_error(p.stderr + p.stdout, str(model_dir)))
    return {"file": out.name, "type": outtype.upper(), "bytes": out.stat().st_size,
            "pre_tokenizer": registered_pre_tokenizer(Path(model_dir)), "seconds": round(time.perf_counter() - t0, 2)}


def _convert_main(src: str, model_dir: str, out: str, outtype: str) -> None:
    """(subprocess) convert_hf_to_gguf.py's own main, with the registered pre-tokenizers known to it."""
    sys.path[:0] = [src, str(Path(src) / "gguf-py")]
    from conversion import base

    name = registered_pre_tokenizer(Path(model_dir))
    if name:
        known = base.TextModel.get_vocab_base_pre

        def get_vocab_base_pre(self, tokenizer):   # what convert_hf_to_gguf_update.py would have added
            return name if Path(self.dir_model).resolve() == Path(model_dir).resolve() else known(self, tokenizer)

        base.TextModel.get_vocab_base_pre = get_vocab_base_pre
    import convert_hf_to_gguf

    sys.argv = ["convert_hf_to_gguf.py", model_dir, "--outfile", out, "--outtype", outtype]
    convert_hf_to_gguf.main()


# --- quantization and what a GGUF holds ----------------------------------------------------------------

def gguf_module(tl: Tools):
    """The vendored gguf-py (it matches the converter that wrote the files)."""
    path = str(tl.src / "gguf-py")
    if path not in sys.path:
        sys.path.insert(0, path)
    import gguf

    return gguf


def tensor_types(path: Path, tl: Tools) -> dict:
    """Parameters per tensor type and the bits per weight of the weights as stored."""
    gguf = gguf_module(tl)
    reader = gguf.GGUFReader(str(path))
    per_type: dict[str, int] = {}
    nbytes = nparams = 0
    for t in reader.tensors:
        per_type[t.tensor_type.name] = per_type.get(t.tensor_type.name, 0) + int(t.n_elements)
        nbytes += int(t.n_bytes)
        nparams += int(t.n_elements)
    return {"params_per_type": dict(sorted(per_type.items(), key=lambda kv: -kv[1])),
            "bits_per_weight": 8 * nbytes / max(1, nparams), "params": nparams}


def quantize(src: Path, out: Path, qtype: str, tl: Tools, threads: int | None = None) -> dict:
    """`llama-quantize src out TYPE`: the file, llama-quantize's own size line, and the tensor types it
    wrote (a K-quant needs rows of 256 weights: narrower tensors fall back to another type, listed)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    cmd = [tl["llama-quantize"], str(src), str(out), qtype.upper(), *([str(threads)] if threads else [])]
    p = subprocess.run(cmd, capture_output=True, text=True)
    log = p.stdout + p.stderr
    out.with_suffix(".quantize.log").write_text(log)
    if p.returncode or not out.exists():
        last = [ln for ln in log.strip().splitlines() if ln.strip()][-1:] or ["no output"]
        raise RuntimeError(f"llama-quantize {qtype.upper()} failed: {last[0].strip()[:300]}")
    info = {"file": out.name, "type": qtype.upper(), "bytes": out.stat().st_size,
            "seconds": round(time.perf_counter() - t0, 2)}
    if m := re.search(r"quant size\s*=\s*([\d.]+) MiB \(([\d.]+) BPW\)", log):
        info["quantize_bpw"] = float(m.group(2))
    m = re.search(r"(\d+) of (\d+) tensor\(s\) required fallback", log)
    info["fallback_tensors"] = int(m.group(1)) if m else 0
    info.update(tensor_types(out, tl))
    return info


def trained_context(model_dir: str | Path) -> int | None:
    """The context the HF model was trained for (max_position_embeddings): the Modelfile's num_ctx."""
    with contextlib.suppress(OSError, ValueError):
        return json.loads((Path(model_dir) / "config.json").read_text()).get("max_position_embeddings")
    return None


def modelfile(gguf_file: str, *, ctx: int | None = None, stop: list[str] = (), comment: list[str] = ()) -> str:
    """An Ollama Modelfile for a raw-completion GGUF: the prompt goes through verbatim (no chat
    template), greedy as evaluated here. Server-wide llama.cpp settings (KV-cache type, flash attention)
    are Ollama environment variables, not Modelfile parameters: they are given as comments."""
    lines = [f"# Ollama: ollama create <name> -f {Path(gguf_file).parent.name or '.'}/Modelfile", *[f"# {c}" for c in comment],
             f"FROM ./{Path(gguf_file).name}", 'TEMPLATE """{{ .Prompt }}"""', "PARAMETER temperature 0"]
    if ctx:
        lines.append(f"PARAMETER num_ctx {int(ctx)}")
    lines += [f"PARAMETER stop {json.dumps(s)}" for s in stop if s]
    return "\n".join(lines) + "\n"


def export(model, options: dict, out: Path) -> dict:
    """The `gguf` stage for engine llamacpp: the model and its draft as GGUF F16 in `out`, with an Ollama
    Modelfile and `gguf.json` (files, sizes, tensor types, the build). Builds the tools first if this
    machine has none. A model the converter refuses is a ConfigError: one line naming the fix (exit 2)."""
    from evalgate.config import ConfigError
    from evalgate.models import has_draft, resolve_model

    tl = tools(options)                      # built once per machine, then cached
    info = {"engine": "llamacpp", "build": {"root": str(tl.root), **tl.info}}
    for which, name in (("id", "model"), ("draft", "draft")):
        if which == "draft" and not has_draft(model):
            continue
        src = resolve_model(model, which)    # a missing model is a config error (exit 2)
        try:
            conv = convert(src, out / f"{name}-f16.gguf", tl, "f16")
        except ConversionError as e:
            raise ConfigError(str(e)) from None
        info[name] = {**conv, **tensor_types(out / conv["file"], tl), "source": src}
    (out / "Modelfile").write_text(modelfile(info["model"]["file"], ctx=trained_context(info["model"]["source"]),
                                             comment=[f"{model.id} converted to GGUF F16 by llama.cpp's "
                                                      "convert_hf_to_gguf.py"]))
    return info


def gguf_checkpoint(gguf_dir: Path, qtype: str, out: Path, options: dict, variant: str) -> dict:
    """`quantize VARIANT` for a GGUF type: llama-quantize the gguf stage's F16 file into `out`, with an
    Ollama Modelfile beside it; the checkpoint record (`format: gguf`)."""
    f = Path(gguf_dir) / "gguf.json"
    conv = json.loads(f.read_text()) if f.exists() else {}
    if not conv.get("model"):
        raise RuntimeError(f"quantization.method {qtype!r} is a GGUF type: it needs engine llamacpp "
                           f"(the gguf stage converted no model into {gguf_dir})")
    tl = tools(options)
    file = out / f"model-{qtype}.gguf"
    info = quantize(Path(gguf_dir) / conv["model"]["file"], file, qtype, tl, options.get("threads"))
    (out / "Modelfile").write_text(modelfile(file.name, ctx=trained_context(conv["model"]["source"]),
                                             comment=[f"variant {variant}: {qtype.upper()} from {conv['model']['file']}"]))
    return {"format": "gguf", **info}


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["convert"] and len(argv) == 5:
        _convert_main(*argv[1:])
        return 0
    if argv[:1] == ["build"]:
        tl = tools({"build": {"jobs": int(argv[1])}} if len(argv) > 1 else None)
        print(json.dumps({"root": str(tl.root), **tl.info}, indent=1))
        return 0
    if argv[:1] == ["where"]:
        print(home())
        return 0
    print("usage: python -m evalgate.gguf build [jobs] | where | convert SRC MODEL OUT TYPE", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
