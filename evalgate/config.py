"""Typed view of params.yaml, validated before any model loads.

Every stage reads params.yaml through `evalgate.compose.load()`, which parses it here; a bad key fails
with one line that names it (`ConfigError`), so a typo never costs a model load. What an *engine* can or cannot do is checked by
the engine adapter (`Engine.check`), not here: this module knows no engine's flags, nor which engines
exist (the registry, evalgate.engines, checks `engine.name`; evalgate.compose.validate runs both, and
checks that every variant file in conf/ is named as its variant).
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any


class ConfigError(ValueError):
    """A bad value in params.yaml; the message names the key."""


# Engine-neutral variant vocabulary. Adapters map these to their own arguments and refuse what they
# cannot do; new methods are added here and in the adapter that implements them.
# GGUF quantization types (llama-quantize's names, lower case): llama.cpp's own formats, written by quantize@<V>
GGUF_TYPES = ("q8_0", "q6_k", "q5_k_m", "q5_k_s", "q5_0", "q4_k_m", "q4_k_s", "q4_0", "q3_k_m", "q3_k_s", "q2_k",
              "iq4_nl")
QUANT_METHODS = ("none", "int8", "int8_dynamic", "int4", "int2", "nf4", "fp8", "w4a16", "w8a8", "checkpoint",
                 *GGUF_TYPES)
OFFLINE_METHODS = ("w4a16", "w8a8", *GGUF_TYPES)   # methods whose weights quantize@<V> writes
# llama.cpp's KV-cache types (--cache-type-k/-v) beside the engine-neutral ones
GGUF_KV_TYPES = ("f16", "bf16", "q8_0", "q5_1", "q5_0", "q4_1", "q4_0", "iq4_nl")
KV_DTYPES = ("auto", "fp8", "int8", "int4", "int2", *GGUF_KV_TYPES)
SPEC_METHODS = ("none", "ngram", "draft")
DTYPES = ("auto", "float32", "bfloat16", "float16")
BASELINE = "baseline"  # the reference's name in results/, the gate, the report and MLflow


@dataclass(frozen=True)
class ModelSpec:
    """Where the model comes from: a local folder (the fixture by default) or a hub id."""
    source: str          # "local" | "hub"
    id: str              # path for local, repo id for hub
    draft: str | None = None
    revision: str | None = None
    dtype: str = "auto"
    gguf: str | None = None        # the GGUF file a llama.cpp engine serves (the gguf stage, or quantize@<V>)
    draft_gguf: str | None = None  # the draft's GGUF (speculative decoding on llama.cpp)


@dataclass(frozen=True)
class Variant:
    """One optimization to try; empty fields mean "as the baseline"."""
    name: str
    quantization: dict = field(default_factory=lambda: {"method": "none"})
    kv_cache: dict = field(default_factory=lambda: {"dtype": "auto"})
    speculative: dict = field(default_factory=lambda: {"method": "none"})
    dtype: str | None = None
    engine_args: dict = field(default_factory=dict)

    def as_params(self) -> dict:
        """The variant's fields, flat and with the same keys for every variant (MLflow params, variant.json):
        each family's method plus its other options as JSON ("{}" when none)."""
        def rest(d: dict, main: str) -> str:
            return json.dumps({k: v for k, v in d.items() if k != main}, sort_keys=True)

        return {"dtype": self.dtype or "model",
                "quantization": self.quantization["method"], "quantization.options": rest(self.quantization, "method"),
                "kv_cache": self.kv_cache["dtype"], "kv_cache.options": rest(self.kv_cache, "dtype"),
                "speculative": self.speculative["method"], "speculative.options": rest(self.speculative, "method"),
                "engine_args": json.dumps(self.engine_args, sort_keys=True)}


@dataclass(frozen=True)
class Threshold:
    metric: str              # lm-eval key "task/metric[/filter]" or a fidelity key
    max_loss_abs: float | None
    max_loss_rel_pct: float | None


@dataclass(frozen=True)
class Config:
    seed: int
    model: ModelSpec
    engine: dict
    workload: dict
    eval: dict
    gate: dict
    thresholds: tuple[Threshold, ...]
    slo: dict            # per-request service-level objective (goodput): ttft_ms, tpot_ms, e2el_ms
    limits: dict         # bounds on profile metrics the gate enforces, e.g. p99_ttft_ms: {max: 200}
    load: dict           # the load sweep (conf/load/)
    mlflow: dict
    report: dict
    variants: dict[str, Variant]
    raw: dict

    def variant(self, name: str) -> Variant:
        if name not in self.variants:
            raise ConfigError(f"variants.{name}: unknown variant (known: {', '.join(self.variants)})")
        return self.variants[name]


# Profile metrics a gate limit may bound (vLLM's serving names; see evalgate.metrics and evalgate.profile).
LIMIT_METRICS = {f"{s}_{m}_ms" for s in ("mean", "median", "p90", "p99")
                 for m in ("ttft", "tpot", "itl", "e2el", "e2el_per_token")} | {
    "output_throughput", "request_throughput", "request_goodput", "mem_peak_mb"}
SLO_KEYS = ("ttft_ms", "tpot_ms", "e2el_ms")   # per request, as `vllm bench serve --goodput` takes them
WORKLOAD_SOURCES = ("tasks", "random", "file")


def _need(d: dict, key: str, where: str) -> Any:
    if not isinstance(d, dict) or key not in d:
        raise ConfigError(f"{where}.{key}: missing")
    return d[key]


def _mapping(v: Any, where: str) -> dict:
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(v).__name__}")
    return v


def _choice(v: Any, allowed: tuple, where: str) -> str:
    if v not in allowed:
        raise ConfigError(f"{where}: {v!r} is not one of {', '.join(map(str, allowed))}")
    return v


def parse_variant(name: str, spec: Any, where: str | None = None) -> Variant:
    where = where or f"variants.{name}"
    spec = _mapping(spec, where)
    unknown = set(spec) - {f.name for f in dataclasses.fields(Variant)} - {"name"}
    if unknown:
        raise ConfigError(f"{where}.{sorted(unknown)[0]}: unknown field")
    q = {"method": "none", **_mapping(spec.get("quantization"), f"{where}.quantization")}
    kv = {"dtype": "auto", **_mapping(spec.get("kv_cache"), f"{where}.kv_cache")}
    sp = {"method": "none", **_mapping(spec.get("speculative"), f"{where}.speculative")}
    _choice(q["method"], QUANT_METHODS, f"{where}.quantization.method")
    _choice(kv["dtype"], KV_DTYPES, f"{where}.kv_cache.dtype")
    _choice(sp["method"], SPEC_METHODS, f"{where}.speculative.method")
    if sp["method"] != "none":
        k = sp.setdefault("num_tokens", 4)
        if not isinstance(k, int) or k < 1:
            raise ConfigError(f"{where}.speculative.num_tokens: must be an integer ≥ 1, got {k!r}")
    dtype = spec.get("dtype")
    if dtype is not None:
        _choice(dtype, DTYPES, f"{where}.dtype")
    return Variant(name=name, quantization=q, kv_cache=kv, speculative=sp, dtype=dtype,
                   engine_args=_mapping(spec.get("engine_args"), f"{where}.engine_args"))


def _parse_thresholds(quality: Any, tasks: list[str]) -> tuple[Threshold, ...]:
    out = []
    for metric, lim in _mapping(quality, "gate.quality").items():
        if lim is None:   # `metric: null` removes a threshold a preset inherits (e.g. a task it cannot evaluate)
            continue
        where = f"gate.quality.{metric}"
        lim = _mapping(lim, where)
        parts = metric.split("/")
        if parts[0] != "fidelity" and (len(parts) not in (2, 3) or parts[0] not in tasks):
            raise ConfigError(f"{where}: expected '<task>/<metric>[/<filter>]' with a task from eval.tasks "
                              f"({', '.join(tasks)})")
        unknown = set(lim) - {"max_loss_abs", "max_loss_rel_pct"}
        if unknown:
            raise ConfigError(f"{where}.{sorted(unknown)[0]}: unknown field (use max_loss_abs, max_loss_rel_pct)")
        a, r = lim.get("max_loss_abs"), lim.get("max_loss_rel_pct")
        if a is None and r is None:
            raise ConfigError(f"{where}: set max_loss_abs and/or max_loss_rel_pct")
        if a is not None and (not isinstance(a, (int, float)) or a < 0):
            raise ConfigError(f"{where}.max_loss_abs: must be a number ≥ 0, got {a!r}")
        if r is not None and (not isinstance(r, (int, float)) or not 0 <= r <= 100):
            raise ConfigError(f"{where}.max_loss_rel_pct: must be within [0, 100], got {r!r}")
        out.append(Threshold(metric, a, r))
    return tuple(out)


def _number(v: Any, where: str, low: float = 0, high: float = math.inf, integer: bool = False,
            strict_low: bool = False) -> float:
    ok = isinstance(v, int) if integer else isinstance(v, (int, float))
    if not ok or isinstance(v, bool) or v < low or v > high or (strict_low and v == low):
        kind = "an integer" if integer else "a number"
        bound = f"> {low:g}" if strict_low else f"≥ {low:g}"
        raise ConfigError(f"{where}: must be {kind} {bound}{f' and ≤ {high:g}' if high != math.inf else ''}, got {v!r}")
    return v


def _parse_slo(slo: Any) -> dict:
    slo = _mapping(slo, "gate.slo")
    for k, v in slo.items():
        if k not in SLO_KEYS:
            raise ConfigError(f"gate.slo.{k}: unknown bound (a request is good when it meets every one of "
                              f"{', '.join(SLO_KEYS)}; aggregate bounds go in gate.limits)")
        _number(v, f"gate.slo.{k}", strict_low=True)
    return slo


def _parse_limits(limits: Any) -> dict:
    limits = _mapping(limits, "gate.limits")
    for metric, lim in limits.items():
        if metric not in LIMIT_METRICS:
            raise ConfigError(f"gate.limits.{metric}: unknown profile metric (known: {', '.join(sorted(LIMIT_METRICS))})")
        lim = _mapping(lim, f"gate.limits.{metric}")
        if not lim or set(lim) - {"max", "min"}:
            raise ConfigError(f"gate.limits.{metric}: expected {{max: X}} and/or {{min: X}}")
        for k, v in lim.items():
            _number(v, f"gate.limits.{metric}.{k}")
    return limits


def _parse_workload(workload: Any) -> dict:
    workload = _mapping(workload, "workload")
    source = _choice(_need(workload, "source", "workload"), WORKLOAD_SOURCES, "workload.source")
    if source == "tasks":
        tasks = _need(workload, "tasks", "workload")
        if not isinstance(tasks, list) or not tasks or not all(isinstance(t, str) for t in tasks):
            raise ConfigError("workload.tasks: expected a non-empty list of lm-eval task names")
        _number(workload.get("prefix_tokens", 0), "workload.prefix_tokens", integer=True)
    elif source == "random":
        for k in ("input_len", "output_len"):
            _number(_need(workload, k, "workload"), f"workload.{k}", low=1, integer=True)
    else:
        path = _need(workload, "path", "workload")
        if not isinstance(path, str) or not path:
            raise ConfigError("workload.path: a JSONL or ShareGPT file is needed with source 'file'")
        _choice(workload.get("format", "auto"), ("auto", "jsonl", "sharegpt"), "workload.format")
    _number(workload.get("max_tokens", 256), "workload.max_tokens", low=1, integer=True)
    if not isinstance(workload.get("ignore_eos", False), bool):
        raise ConfigError(f"workload.ignore_eos: must be true or false, got {workload['ignore_eos']!r}")
    return workload


def _parse_load(load: Any) -> dict:
    load = _mapping(load, "load")
    conc = load.get("concurrency", [1])
    if not isinstance(conc, list) or not conc or not all(isinstance(c, int) and not isinstance(c, bool) and c >= 1
                                                          for c in conc) or conc != sorted(set(conc)):
        raise ConfigError(f"load.concurrency: expected an increasing list of integers ≥ 1, got {conc!r}")
    rates = load.get("rates", [])
    if not isinstance(rates, list) or not all(isinstance(r, (int, float)) and not isinstance(r, bool) and r > 0
                                              for r in rates):
        raise ConfigError(f"load.rates: expected a list of numbers > 0 (fractions of the baseline's peak "
                          f"request rate), got {rates!r}")
    req = _mapping(load.get("requests", {}), "load.requests")
    lo = _number(req.get("min", 16), "load.requests.min", low=1, integer=True)
    _number(req.get("max", 256), "load.requests.max", low=lo, integer=True)
    dur = _mapping(load.get("duration_s", {}), "load.duration_s")
    _number(dur.get("max", 60), "load.duration_s.max", low=_number(dur.get("min", 0), "load.duration_s.min"))
    _number(load.get("target_ci_pct", 2.0), "load.target_ci_pct", strict_low=True)
    _number(load.get("burstiness", 1.0), "load.burstiness", strict_low=True)
    _number(load.get("saturation_gain_pct", 5.0), "load.saturation_gain_pct")
    _number(load.get("warmup", 0), "load.warmup", integer=True)
    _number(load.get("waves", 4), "load.waves", low=1, integer=True)
    if not isinstance(load.get("aa", False), bool):
        raise ConfigError(f"load.aa: must be true or false, got {load['aa']!r}")
    return load


def _parse_statistics(statistics: Any) -> dict:
    statistics = _mapping(statistics, "gate.statistics")
    unknown = set(statistics) - {"enabled", "alpha", "power", "on_inconclusive"}
    if unknown:
        raise ConfigError(f"gate.statistics.{sorted(unknown)[0]}: unknown field")
    if not 0 < statistics.get("alpha", 0.05) < 0.5:
        raise ConfigError(f"gate.statistics.alpha: must be within (0, 0.5), got {statistics['alpha']!r}")
    if not 0 < statistics.get("power", 0.8) < 1:
        raise ConfigError(f"gate.statistics.power: must be within (0, 1), got {statistics['power']!r}")
    _choice(statistics.get("on_inconclusive", "reject"), ("reject", "accept"), "gate.statistics.on_inconclusive")
    return statistics


def _parse_sequential(sequential: Any) -> dict:
    sequential = _mapping(sequential, "gate.sequential")
    unknown = set(sequential) - {"enabled", "looks", "alpha"}
    if unknown:
        raise ConfigError(f"gate.sequential.{sorted(unknown)[0]}: unknown field")
    looks = sequential.get("looks", [])
    if not isinstance(looks, list) or not all(isinstance(x, (int, float)) and 0 < x < 1 for x in looks) \
            or looks != sorted(set(looks)):
        raise ConfigError(f"gate.sequential.looks: expected increasing fractions within (0, 1), got {looks!r}")
    if not 0 < sequential.get("alpha", 0.01) < 0.5:
        raise ConfigError(f"gate.sequential.alpha: must be within (0, 0.5), got {sequential['alpha']!r}")
    return sequential


def _parse_model(m: Any) -> ModelSpec:
    m = _mapping(m, "model")
    source = _choice(_need(m, "source", "model"), ("local", "hub"), "model.source")
    mid = _need(m, "id", "model")
    if not isinstance(mid, str) or not mid:
        raise ConfigError("model.id: must be a non-empty string")
    return ModelSpec(source=source, id=mid, draft=m.get("draft"), revision=m.get("revision"),
                     dtype=_choice(m.get("dtype", "auto"), DTYPES, "model.dtype"))


def parse(raw: dict) -> Config:
    """Validate a composed params dict (schema only: no files, no engines)."""
    raw = _mapping(raw, "params")
    engine = _mapping(_need(raw, "engine", "params"), "engine")
    if not isinstance(_need(engine, "name", "engine"), str):
        raise ConfigError(f"engine.name: expected a string, got {engine['name']!r}")
    ev = _mapping(_need(raw, "eval", "params"), "eval")
    tasks = _need(ev, "tasks", "eval")
    if not isinstance(tasks, list) or not tasks or not all(isinstance(t, str) for t in tasks):
        raise ConfigError("eval.tasks: expected a non-empty list of lm-eval task names")
    limit = ev.get("limit")
    if limit is not None and (not isinstance(limit, (int, float)) or limit <= 0):
        raise ConfigError(f"eval.limit: must be null or a number > 0, got {limit!r}")
    gate = _mapping(_need(raw, "gate", "params"), "gate")
    variants_raw = _mapping(raw.get("variants"), "variants")
    if BASELINE in variants_raw:
        raise ConfigError(f"variants.{BASELINE}: the name is reserved for the reference (params `{BASELINE}:`)")
    base = parse_variant(BASELINE, _need(raw, BASELINE, "params"), where=BASELINE)
    if base.quantization["method"] in OFFLINE_METHODS:
        raise ConfigError(f"{BASELINE}.quantization.method: {base.quantization['method']!r} needs a quantize@ stage, "
                          "which only variants have; give the baseline a pre-quantized checkpoint instead")
    # the baseline first: every consumer (gate, report, MLflow) sees it as one more variant
    variants = {BASELINE: base, **{n: parse_variant(n, s) for n, s in variants_raw.items()}}
    _parse_statistics(gate.get("statistics"))
    _parse_sequential(gate.get("sequential"))
    workload = _parse_workload(_need(raw, "workload", "params"))
    load = _parse_load(raw.get("load", {}))
    return Config(
        seed=int(raw.get("seed", 0)), model=_parse_model(_need(raw, "model", "params")), engine=engine,
        workload=workload, eval=ev, gate=gate, thresholds=_parse_thresholds(gate.get("quality"), tasks),
        slo=_parse_slo(gate.get("slo")), limits=_parse_limits(gate.get("limits")), load=load,
        mlflow=_mapping(raw.get("mlflow"), "mlflow"),
        report=_mapping(raw.get("report"), "report"), variants=variants, raw=raw)


def fixture_params(raw: dict) -> dict:
    """The `fixture:` section, the only one the fixture stage reads (its keys are checked by the trainer)."""
    fx = raw.get("fixture") if isinstance(raw, dict) else None
    if not isinstance(fx, dict):
        raise ConfigError("fixture: missing from params")
    _choice(fx.get("device", "auto"), ("auto", "cpu", "cuda"), "fixture.device")
    _choice(fx.get("bf16", "auto"), ("auto", True, False), "fixture.bf16")
    return fx
