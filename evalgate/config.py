"""The params schema: every key of params.yaml declared once (pydantic v2 models below), validated before
any model loads.

Every stage reads params.yaml through `evalgate.compose.load()`, which parses it here (`parse`): every
key, type and range of every section is checked at once by `Params`, in strict mode (no `true` taken as
1, no "3" taken as 3), unknown keys refused. The first problem becomes one `ConfigError` line naming the
key, the value and what is allowed (`engine.eval_batch_size: must be ≥ 1, got 0`); the CLI prints it and
exits 2. Nothing here imports torch, transformers, lm-eval or vLLM (tests/test_config_fuzz.py checks).

What the schema cannot know is checked where it can be, still before any model loads: a registered
engine (evalgate.engines; its options are declared here per engine, `ENGINE_OPTIONS`), variant files
named as their variants (evalgate.compose), lm-eval task names and the gated metrics of each task
(evalgate.evaluate, through lm-eval's own task index), model paths (evalgate.models). What an *engine*
can or cannot do with a valid variant (fp8 weights on the CPU engine…) is the adapter's `Engine.check`:
such a variant is rejected with the reason and the others run.

The sections reach the code as the `Config` view below: dicts of exactly the keys the user gave (the
code's own defaults, which the fields here document, apply to the rest), `ModelSpec`, `Variant` and
`Threshold` objects.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from evalgate.errors import ConfigError  # noqa: F401 - re-exported: `from evalgate.config import ConfigError`

# Engine-neutral variant vocabulary. Adapters map these to their own arguments and refuse what they
# cannot do; new methods are added here and in the adapter that implements them.
# GGUF quantization types (llama-quantize's names, lower case): llama.cpp's own formats, written by quantize@<V>
GGUF_TYPES = ("q8_0", "q6_k", "q5_k_m", "q5_k_s", "q5_0", "q4_k_m", "q4_k_s", "q4_0", "q3_k_m", "q3_k_s", "q2_k", "iq4_nl")
QUANT_METHODS = ("none", "int8", "int8_dynamic", "int4", "int2", "nf4", "fp8", "w4a16", "w8a8", "checkpoint", *GGUF_TYPES)
# llama.cpp's KV-cache types (--cache-type-k/-v) beside the engine-neutral ones
GGUF_KV_TYPES = ("f16", "bf16", "q8_0", "q5_1", "q5_0", "q4_1", "q4_0", "iq4_nl")
KV_DTYPES = ("auto", "fp8", "int8", "int4", "int2", *GGUF_KV_TYPES)
SPEC_METHODS = ("none", "ngram", "draft")
DTYPES = ("auto", "float32", "bfloat16", "float16")
BASELINE = "baseline"  # the reference's name in results/, the gate, the report and MLflow
FIXTURE_DRAFT = "fixtures/draft"  # where the fixture stage writes its draft (dvc.yaml; conf/model/fixture.yaml)
OFFLINE_QUANT = ("w4a16", "w8a8", *GGUF_TYPES)  # written by a quantize@<variant> stage, which only variants have

# Profile metrics a gate limit may bound and the report may rank by (vLLM's serving names; see
# evalgate.metrics and evalgate.profile). `report.rank_by`'s direction comes from the name
# (evalgate.select.lower_is_better).
LIMIT_METRICS = {
    f"{s}_{m}_ms" for s in ("mean", "median", "p90", "p99") for m in ("ttft", "tpot", "itl", "e2el", "e2el_per_token")
} | {"output_throughput", "request_throughput", "request_goodput", "mem_peak_mb"}
RANK_METRICS = LIMIT_METRICS
SLO_KEYS = ("ttft_ms", "tpot_ms", "e2el_ms")  # per request, as `vllm bench serve --goodput` takes them
WORKLOAD_SOURCES = ("tasks", "random", "file")
FIDELITY_METRICS = ("kl_mean", "top1_agreement", "answer_flip_rate")  # evalgate.fidelity
VARIANT_NAME = r"^[A-Za-z0-9_][A-Za-z0-9_-]*$"  # a folder, a DVC stage key (run@<name>), an MLflow run name


# -- building blocks ----------------------------------------------------------------------------------
def _problem(kind: str, message: str, **ctx) -> PydanticCustomError:
    """A schema problem; `key` in ctx names a key below the current location, `value` its value."""
    return PydanticCustomError(kind, message, ctx)


class Section(BaseModel):
    """A mapping of declared keys: strict types, unknown keys refused with the list of known ones."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        if data is None:
            return {}
        if isinstance(data, dict) and cls.model_config.get("extra") == "forbid":
            for k in data:
                if k not in cls.model_fields:
                    raise _problem(
                        "unknown_key",
                        "unknown key (known: {known})",
                        key=str(k),
                        value=data[k],
                        known=", ".join(cls.model_fields),
                    )
        return data


PositiveInt = Annotated[int, Field(ge=1)]
NonNegInt = Annotated[int, Field(ge=0)]
PositiveFloat = Annotated[float, Field(gt=0)]
NonNegFloat = Annotated[float, Field(ge=0)]
Name = Annotated[str, Field(min_length=1)]
Fraction = Annotated[float, Field(gt=0, lt=1)]
Alpha = Annotated[float, Field(gt=0, lt=0.5)]


def _increasing(values: list, what: str) -> list:
    if any(b <= a for a, b in zip(values, values[1:])):
        raise _problem("not_increasing", "must be strictly increasing ({what})", what=what)
    return values


def _unique(values: list) -> list:
    seen = [v for i, v in enumerate(values) if v in values[:i]]
    if seen:
        raise _problem("duplicate", "lists '{dup}' twice", dup=seen[0])
    return values


# -- model ----------------------------------------------------------------------------------------------
class ModelParams(Section):
    """Where the model comes from: a local folder (the fixture by default) or a hub id."""

    source: Literal["local", "hub"]
    id: Name  # path for local, repo id for hub
    draft: Name | None = None
    revision: Name | None = None
    dtype: Literal[DTYPES] = "auto"


# -- engines: common options, and each engine's own ---------------------------------------------------------
class EngineOptions(Section):
    name: Name
    eval_batch_size: PositiveInt = 32  # lm-eval's batch (hf) / prompts per request (vllm)


class HFEngineArgs(BaseModel):
    """`engine_args` the hf adapter knows, typed; any other key is the adapter's to refuse (the variant
    is then rejected with the reason, as for any option an engine cannot run)."""

    model_config = ConfigDict(strict=True, extra="allow", frozen=True)
    attn_implementation: Literal["eager", "sdpa"] | None = None
    cache_implementation: Literal["dynamic", "static"] | None = None
    batch_size: PositiveInt | None = None  # the profile's static batches
    eval_batch_size: PositiveInt | None = None  # lm-eval's batch
    max_model_len: PositiveInt | None = None  # lm-eval's context


class HFOptions(EngineOptions):
    """`hf`: transformers in the stage's own process (the CPU default)."""

    name: Literal["hf"]
    device: Annotated[str, Field(pattern=r"^(cpu|cuda(:\d+)?|mps)$")] = "cpu"
    # on the CPU, variants `evalgate repro` loads and evaluates at once, one thread each (auto: the cores),
    # their profiles still one at a time with every core (evalgate.lanes); 1: one after the other
    side_by_side: Literal["auto"] | PositiveInt = "auto"
    engine_args: HFEngineArgs = HFEngineArgs()


class VLLMOptions(EngineOptions):
    """`vllm`: a `vllm serve` subprocess per variant (GPU host)."""

    name: Literal["vllm"]
    eval_batch_size: PositiveInt = 1
    seed: NonNegInt = 0
    kv_cache_memory_gb: PositiveFloat | None = None
    server_overhead_gb: NonNegFloat = 3
    gpu_memory_utilization: Annotated[float, Field(gt=0, le=1)] = 0.85
    schedule_memory_fraction: Annotated[float, Field(gt=0, le=1)] = 0.9
    start_timeout_s: PositiveFloat = 600
    quality_timeout_s: PositiveFloat = 1800
    eval_concurrency: PositiveInt = 16
    max_length: PositiveInt = 2048
    max_model_len: PositiveInt | None = None
    max_logprobs: PositiveInt = 20
    engine_args: dict[str, Any] = {}  # any `vllm serve` flag: checked against vLLM's EngineArgs where vLLM is
    cli: list[Name] | None = None  # the command that runs vLLM's CLI (tests: a fake server)


class OtherEngine(EngineOptions):
    """An engine registered in evalgate.engines that declares no options here: its name is checked, its
    other options are its adapter's to check."""

    model_config = ConfigDict(strict=True, extra="allow", frozen=True)

    @field_validator("name")
    @classmethod
    def _registered(cls, name: str) -> str:
        from evalgate.engines import ENGINES

        if name not in ENGINES:
            raise _problem("unknown_name", "must be one of {known}", known=", ".join(ENGINES))
        return name


ENGINE_OPTIONS: dict[str, type[EngineOptions]] = {"hf": HFOptions, "vllm": VLLMOptions}


def _engine_kind(v: Any) -> str:
    name = v.get("name") if isinstance(v, dict) else getattr(v, "name", None)
    return name if name in ENGINE_OPTIONS else "other"


Engine = Annotated[
    Annotated[HFOptions, Tag("hf")] | Annotated[VLLMOptions, Tag("vllm")] | Annotated[OtherEngine, Tag("other")],
    Discriminator(_engine_kind),
]


# -- variants ----------------------------------------------------------------------------------------------
class Quantization(Section):
    method: Literal[QUANT_METHODS] = "none"
    backend: Name | None = None  # another library for the method (hf: torchao, quanto, bitsandbytes…)
    group_size: PositiveInt | None = None  # int4/w4a16: weights per scale
    path: Name | None = None  # method checkpoint: a pre-quantized checkpoint (folder or hub id)
    revision: Name | None = None

    @model_validator(mode="after")
    def _path_with_checkpoint(self):
        if self.method == "checkpoint" and not self.path:
            raise _problem(
                "field_error",
                "needed with method 'checkpoint' (a pre-quantized checkpoint's folder or hub id)",
                key="path",
                value=None,
            )
        if self.path and self.method != "checkpoint":
            raise _problem(
                "field_error", "only read with method 'checkpoint' (method is '{m}')", key="path", value=self.path, m=self.method
            )
        return self


class KVCache(Section):
    dtype: Literal[KV_DTYPES] = "auto"
    v_dtype: Literal[KV_DTYPES] | None = None  # the V cache's type where it differs from K (llama.cpp)
    backend: Name | None = None
    group_size: PositiveInt | None = None
    residual_length: NonNegInt | None = None  # recent tokens kept unquantized (KIVI)


class Speculative(Section):
    method: Literal[SPEC_METHODS] = "none"
    num_tokens: PositiveInt = 4  # tokens proposed per step
    lookup_max: PositiveInt | None = None  # n-gram sizes (vllm ngram)
    lookup_min: PositiveInt | None = None

    @model_validator(mode="after")
    def _lookup_order(self):
        if self.lookup_min and self.lookup_max and self.lookup_min > self.lookup_max:
            raise _problem(
                "field_error", "must be ≤ lookup_max ({hi})", key="lookup_min", value=self.lookup_min, hi=self.lookup_max
            )
        return self


class VariantSpec(Section):
    """One optimization to try; what is not given is as the baseline."""

    quantization: Quantization = Quantization()
    kv_cache: KVCache = KVCache()
    speculative: Speculative = Speculative()
    dtype: Literal[DTYPES] | None = None
    engine_args: dict[str, Any] = {}

    @field_validator("engine_args", mode="before")
    @classmethod
    def _none_is_empty(cls, v):
        return {} if v is None else v


# -- the gate -----------------------------------------------------------------------------------------------
LIMIT_KEYS = ("max_loss_abs", "max_loss_rel_pct")


class QualityLimit(Section):
    """The margin δ of one quality metric: the tighter of the two given (docs: README, The gate)."""

    max_loss_abs: NonNegFloat | None = None  # in the metric's unit (0.02 = 2 points of accuracy)
    max_loss_rel_pct: Annotated[float, Field(ge=0, le=100)] | None = None  # % of the baseline value

    @model_validator(mode="after")
    def _one_given(self):
        if self.max_loss_abs is None and self.max_loss_rel_pct is None:
            raise _problem("missing_limit", "set max_loss_abs and/or max_loss_rel_pct")
        return self


def flatten_quality(quality: Any) -> dict[str, Any]:
    """gate.quality → {"task/metric[/filter]": limits}. Both spellings are one key: the nested one
    (`fx_add: {exact_match: {max_loss_abs: 0.02}}`, which a Hydra override can reach:
    `gate.quality.fx_add.exact_match.max_loss_abs=0.05`) and the slash one (`fx_add/exact_match: {…}`)."""
    if quality is None:
        return {}
    if not isinstance(quality, dict):
        raise _problem(
            "dict_type", "must be a mapping: <task>/<metric>[/<filter>] (or nested) to max_loss_abs and/or max_loss_rel_pct"
        )
    out: dict[str, Any] = {}
    removed: set[str] = set()

    def walk(prefix: str, node: Any) -> None:
        if node is None and prefix:  # `metric: null` removes a threshold a preset inherits (a task it cannot
            removed.add(prefix)  # run), whichever spelling gave it
            return
        if isinstance(node, dict) and node and (set(node) & set(LIMIT_KEYS) or not prefix.count("/") < 2):
            if prefix in out:
                raise _problem("duplicate", "gate.quality gives '{k}' twice (nested and with slashes)", k=prefix)
            out[prefix] = node
            return
        if not isinstance(node, dict) or not node:
            raise _problem(
                "field_error",
                "expected max_loss_abs and/or max_loss_rel_pct for a '<task>/<metric>[/<filter>]' key",
                key=prefix,
                value=node,
            )
        for k, v in node.items():
            walk(f"{prefix}/{k}" if prefix else str(k), v)

    for k, v in quality.items():
        walk(str(k), v)
    return {k: v for k, v in out.items() if k not in removed}


class Bound(Section):
    max: NonNegFloat | None = None
    min: NonNegFloat | None = None

    @model_validator(mode="after")
    def _given(self):
        if self.max is None and self.min is None:
            raise _problem("missing_limit", "expected max and/or min")
        if self.max is not None and self.min is not None and self.min > self.max:
            raise _problem("field_error", "must be ≤ max ({hi})", key="min", value=self.min, hi=self.max)
        return self


class SLO(Section):
    """A request is good when it meets every bound given (vllm bench serve --goodput); aggregate bounds
    go in gate.limits."""

    ttft_ms: PositiveFloat | None = None
    tpot_ms: PositiveFloat | None = None
    e2el_ms: PositiveFloat | None = None


class OutputLength(Section):
    min_ratio: NonNegFloat = 0.0
    max_ratio: PositiveFloat = math.inf

    @model_validator(mode="after")
    def _order(self):
        if self.min_ratio > self.max_ratio:
            raise _problem("field_error", "must be ≤ max_ratio ({hi})", key="min_ratio", value=self.min_ratio, hi=self.max_ratio)
        return self


class Statistics(Section):
    enabled: bool = True
    alpha: Alpha = 0.05
    power: Fraction = 0.8
    on_inconclusive: Literal["reject", "accept"] = "reject"


class Sequential(Section):
    enabled: bool = False
    looks: list[Fraction] = []
    alpha: Alpha = 0.01
    # a stop whose repeat (the same docs asked again) is not inferior: reject the variant (the reason says
    # it was not reproducible), or evaluate on (the check uses the repeat, the full evaluation runs
    # uncached, the verdict carries a warning)
    on_unreproducible: Literal["reject", "evaluate_on"] = "reject"

    @field_validator("looks")
    @classmethod
    def _looks(cls, v):
        return _increasing(v, "cumulative fractions of the docs")


class Gate(Section):
    quality: dict[str, QualityLimit] = {}
    slo: SLO = SLO()
    limits: dict[Literal[tuple(sorted(LIMIT_METRICS))], Bound] = {}
    output_length: OutputLength | None = None
    statistics: Statistics = Statistics()
    sequential: Sequential = Sequential()
    check: dict[str, Any] = {}  # the CI policy of `evalgate check`: evalgate.check.parse_policy checks it

    @field_validator("quality", mode="before")
    @classmethod
    def _flatten(cls, v):
        return flatten_quality(v)

    @field_validator("limits", mode="before")
    @classmethod
    def _none_is_empty(cls, v):
        return {} if v is None else v


# -- workload, load, eval -------------------------------------------------------------------------------------
class WorkloadBase(Section):
    name: Name | None = None
    max_tokens: PositiveInt = 256  # a request's cap (it ends at EOS or a stop sequence first)
    ignore_eos: bool = False


class TasksWorkload(WorkloadBase):
    """Prompts of lm-eval tasks, with each task's stop sequences."""

    source: Literal["tasks"]
    tasks: Annotated[list[Name], Field(min_length=1)]
    prefix_tokens: NonNegInt = 0
    prefix_text: str | None = None

    @field_validator("tasks")
    @classmethod
    def _no_twice(cls, v):
        return _unique(v)


class RandomWorkload(WorkloadBase):
    """Random token ids of fixed length (vllm bench serve's random dataset)."""

    source: Literal["random"]
    input_len: PositiveInt
    output_len: PositiveInt


class FileWorkload(WorkloadBase):
    """The user's own JSONL or ShareGPT file."""

    source: Literal["file"]
    path: Name
    format: Literal["auto", "jsonl", "sharegpt"] = "auto"


Workload = Annotated[
    Annotated[TasksWorkload, Tag("tasks")] | Annotated[RandomWorkload, Tag("random")] | Annotated[FileWorkload, Tag("file")],
    Discriminator(
        lambda v: v.get("source") if isinstance(v, dict) else getattr(v, "source", None),
        custom_error_type="unknown_source",
        custom_error_message="unknown workload source",
    ),
]


class MinMax(Section):
    """A `min`/`max` pair: max ≥ min (the fields are the subclass's)."""

    @model_validator(mode="after")
    def _order(self):
        if self.max < self.min:
            raise _problem("field_error", "must be ≥ min ({lo})", key="max", value=self.max, lo=self.min)
        return self


class Requests(MinMax):
    min: PositiveInt = 16
    max: PositiveInt = 256


class Duration(MinMax):
    min: NonNegFloat = 0
    max: PositiveFloat = 60


class Load(Section):
    """The load sweep (conf/load/): a concurrency ladder, then request rates."""

    concurrency: Annotated[list[PositiveInt], Field(min_length=1)] = [1]
    rates: list[PositiveFloat] = []  # fractions of the baseline's peak request rate
    requests: Requests = Requests()
    duration_s: Duration = Duration()
    target_ci_pct: PositiveFloat = 2.0
    burstiness: PositiveFloat = 1.0
    saturation_gain_pct: NonNegFloat = 5.0
    warmup: NonNegInt = 0
    warmup_each_level: bool = False  # every concurrency level warms with max(warmup, concurrency) requests first
    waves: PositiveInt = 4
    aa: bool = False
    alone_check: bool = False  # scheduled runs: the baseline a third time, every other server stopped
    hold_neighbours: bool = True  # scheduled runs: the idle servers SIGSTOPped while another is profiled

    @field_validator("concurrency")
    @classmethod
    def _ladder(cls, v):
        return _increasing(v, "a ladder of integers ≥ 1")


class Fidelity(Section):
    tasks: list[Name] = []
    max_texts: PositiveInt = 200
    top_k: PositiveInt = 20


class Eval(Section):
    tasks: Annotated[list[Name], Field(min_length=1)]
    include_path: Annotated[list[Name], Field(min_length=1)] | None = None  # one folder or several
    limit: PositiveFloat | None = None  # docs per task: < 1 a fraction, else a count
    bootstrap_iters: NonNegInt = 1000
    fidelity: Fidelity = Fidelity()

    @field_validator("include_path", mode="before")
    @classmethod
    def _one_or_many(cls, v):
        return [v] if isinstance(v, str) else v

    @field_validator("tasks", "include_path")
    @classmethod
    def _no_twice(cls, v):
        return None if v is None else _unique(v)

    @field_validator("limit")
    @classmethod
    def _limit(cls, v):
        if v is not None and v >= 1 and v != int(v):
            raise _problem("limit", "must be a fraction < 1 or a whole number of docs")
        return v


# -- the fixture stage's trainer ----------------------------------------------------------------------------
FIXTURE_KINDS = ("add", "copy", "recall", "sentence", "count", "needle")
Pair = Annotated[list[PositiveInt], Field(min_length=2, max_length=2)]


class FixtureModel(Section):
    hidden_size: PositiveInt
    num_layers: PositiveInt
    num_heads: PositiveInt
    intermediate_size: PositiveInt
    max_position_embeddings: PositiveInt
    mix: dict[Literal[FIXTURE_KINDS], NonNegFloat]
    steps: PositiveInt
    batch_size: PositiveInt
    seq_len: PositiveInt
    lr: PositiveFloat
    warmup_steps: NonNegInt
    weight_decay: NonNegFloat

    @model_validator(mode="after")
    def _heads(self):
        if self.hidden_size % self.num_heads:
            raise _problem(
                "field_error", "must divide hidden_size ({h})", key="num_heads", value=self.num_heads, h=self.hidden_size
            )
        return self


class FixtureCorpus(Section):
    heldout: dict[Literal[FIXTURE_KINDS], NonNegInt]
    add_digits: Annotated[list[NonNegFloat], Field(min_length=1)]
    copy_words: Pair
    recall_pairs: Pair
    count_len: Pair | None = None
    needle_sentences: Pair | None = None
    context_sentences: Pair | None = None
    context_prob: Annotated[float, Field(ge=0, le=1)] | None = None


class FixtureTokenizer(Section):
    vocab_size: PositiveInt
    lines: PositiveInt


class Fixture(Section):
    seed: NonNegInt
    device: Literal["auto", "cpu", "cuda"] = "auto"
    bf16: Literal["auto"] | bool = "auto"
    attn_implementation: Literal["eager", "sdpa", "varlen"]  # varlen: CUDA + bf16 (toymodel.train.varlen_attention)
    deterministic: bool = False  # torch's deterministic kernels (toymodel.train.deterministic): one fixture per kind of card
    eval_batch_size: PositiveInt
    tokenizer: FixtureTokenizer
    corpus: FixtureCorpus
    target: FixtureModel
    draft: FixtureModel | None = None  # null: no draft is trained (no variant of the configuration needs one)


# -- tracking, report, faults -------------------------------------------------------------------------------
class MLflow(Section):
    enabled: bool = True  # false: no MLflow at all (results and verdicts are files either way)
    experiment: Name = "evalgate"
    tracking_uri: Name | None = None  # null: $MLFLOW_TRACKING_URI, else MLflow's default (sqlite:///mlflow.db)
    system_metrics: bool = True
    system_metrics_interval_s: PositiveFloat = 5
    registered_model: Name = "evalgate"  # the best accepted variant's versions (evalgate.registry)
    alias: Name = "champion"  # the deployed version: moved by `evalgate check --promote` only


class Report(Section):
    rank_by: Literal[tuple(sorted(RANK_METRICS))] = "output_throughput"


class Faults(Section):
    """What a variant's run does when something fails (README, Failures). Not a dependency of any
    stage: changing it re-runs nothing."""

    attempts: Annotated[int, Field(ge=1, le=10)] = 3  # tries of a variant whose failure is transient
    backoff_s: NonNegFloat = 5  # wait before the 2nd try, doubled for each next one
    variant_timeout_s: PositiveFloat | None = 7200  # a variant running longer is stopped (a timeout: transient)
    memory_limit_mb: PositiveInt | None = None  # the variant process's address space (RLIMIT_AS): an out-of-memory
    # error instead of the machine's OOM killer
    retry_unreproducible: bool = True  # an evaluation whose identical requests were answered differently runs once
    # more, with the device to itself (evalgate.runner.retry_alone)


# -- the whole of params.yaml --------------------------------------------------------------------------------
class Params(Section):
    seed: NonNegInt = 0
    model: ModelParams
    engine: Engine
    workload: Workload
    load: Load = Load()
    eval: Eval
    gate: Gate
    fixture: Fixture | None = None  # the fixture stage's (it says when it is missing)
    baseline: VariantSpec
    variants: dict[Annotated[str, Field(pattern=VARIANT_NAME)], VariantSpec] = {}
    mlflow: MLflow = MLflow()
    report: Report = Report()
    faults: Faults = Faults()

    @field_validator("variants", mode="before")
    @classmethod
    def _no_variants(cls, v):
        return {} if v is None else v

    @model_validator(mode="after")
    def _across_sections(self):
        if BASELINE in self.variants:
            raise _problem(
                "field_error",
                "the name is reserved for the reference (params `baseline:`)",
                key=f"variants.{BASELINE}",
                value=self.variants[BASELINE].model_dump(exclude_unset=True),
            )
        if self.baseline.quantization.method in OFFLINE_QUANT:
            raise _problem(
                "field_error",
                "'{m}' needs a quantize@ stage, which only variants have; give the baseline a "
                "pre-quantized checkpoint instead (method: checkpoint)",
                key="baseline.quantization.method",
                value=self.baseline.quantization.method,
                m=self.baseline.quantization.method,
            )
        for metric in self.gate.quality:
            parts = metric.split("/")
            where = f"gate.quality.{metric}"
            if parts[0] == "fidelity":
                if len(parts) != 2 or parts[1] not in FIDELITY_METRICS:
                    raise _problem(
                        "field_error",
                        "a fidelity metric is one of {known}",
                        key=where,
                        value=metric,
                        known=", ".join(f"fidelity/{m}" for m in FIDELITY_METRICS),
                    )
                if parts[1] != "answer_flip_rate" and not self.eval.fidelity.tasks:  # flips need no reference texts
                    raise _problem(
                        "field_error", "gates a fidelity metric, but eval.fidelity.tasks is empty", key=where, value=metric
                    )
            elif len(parts) not in (2, 3) or parts[0] not in self.eval.tasks:
                raise _problem(
                    "field_error",
                    "expected '<task>/<metric>[/<filter>]' with a task of eval.tasks ({tasks}) or 'fidelity/<metric>'",
                    key=where,
                    value=metric,
                    tasks=", ".join(self.eval.tasks),
                )
        if self.fixture is not None and self.fixture.draft is None and self.model.draft == FIXTURE_DRAFT:
            for name, spec in {BASELINE: self.baseline, **self.variants}.items():
                if spec.speculative.method == "draft":
                    raise _problem(
                        "field_error",
                        "'draft' needs the fixture's draft model, and fixture.draft is null (this configuration "
                        "trains none): choose fixture=cpu_draft, or give fixture.draft",
                        key=f"{_spec_key(name)}.speculative.method",
                        value="draft",
                    )
        if isinstance(self.engine, HFOptions):
            for name, spec in {BASELINE: self.baseline, **self.variants}.items():
                try:
                    HFEngineArgs.model_validate(spec.engine_args)
                except ValidationError as e:
                    err = e.errors()[0]
                    where = f"{_spec_key(name)}.engine_args"
                    raise _problem(
                        "field_error", _describe(err), key=".".join([where, *map(str, err["loc"])]), value=err.get("input")
                    ) from None
        return self


def _spec_key(name: str) -> str:
    """Where a variant spec sits in params.yaml: `baseline` or `variants.<name>`."""
    return "baseline" if name == BASELINE else f"variants.{name}"


# -- the view the code uses -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelSpec:
    """Where the model comes from: a local folder (the fixture by default) or a hub id."""

    source: str  # "local" | "hub"
    id: str  # path for local, repo id for hub
    draft: str | None = None
    revision: str | None = None
    dtype: str = "auto"
    gguf: str | None = None  # the GGUF file a llama.cpp engine serves (the gguf stage, or quantize@<V>)
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

        return {
            "dtype": self.dtype or "model",
            "quantization": self.quantization["method"],
            "quantization.options": rest(self.quantization, "method"),
            "kv_cache": self.kv_cache["dtype"],
            "kv_cache.options": rest(self.kv_cache, "dtype"),
            "speculative": self.speculative["method"],
            "speculative.options": rest(self.speculative, "method"),
            "engine_args": json.dumps(self.engine_args, sort_keys=True),
        }


@dataclass(frozen=True)
class Threshold:
    metric: str  # lm-eval key "task/metric[/filter]" or a fidelity key
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
    slo: dict  # per-request service-level objective (goodput): ttft_ms, tpot_ms, e2el_ms
    limits: dict  # bounds on profile metrics the gate enforces, e.g. p99_ttft_ms: {max: 200}
    load: dict  # the load sweep (conf/load/)
    mlflow: dict
    report: dict
    variants: dict[str, Variant]
    raw: dict
    faults: dict = field(default_factory=dict)

    def variant(self, name: str) -> Variant:
        if name not in self.variants:
            raise ConfigError(f"variants.{name}: unknown variant (known: {', '.join(self.variants)})")
        return self.variants[name]


def _given(m: BaseModel) -> dict:
    """The keys the user gave, validated (the code's defaults apply to the rest)."""
    return m.model_dump(exclude_unset=True)


def _variant(name: str, spec: VariantSpec) -> Variant:
    q = {"method": spec.quantization.method, **_given(spec.quantization)}
    kv = {"dtype": spec.kv_cache.dtype, **_given(spec.kv_cache)}
    sp = {"method": spec.speculative.method, **_given(spec.speculative)}
    if sp["method"] != "none":
        sp.setdefault("num_tokens", spec.speculative.num_tokens)
    return Variant(name=name, quantization=q, kv_cache=kv, speculative=sp, dtype=spec.dtype, engine_args=dict(spec.engine_args))


# -- one line per problem --------------------------------------------------------------------------------------
_TAGS = {"engine": ("hf", "vllm", "other"), "workload": WORKLOAD_SOURCES}
_TYPES = {
    "int_type": "an integer",
    "int_parsing": "an integer",
    "float_type": "a number",
    "float_parsing": "a number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "string_type": "a string",
    "list_type": "a list",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
    "int_from_float": "a whole number",
    "finite_number": "a finite number",
}
_BOUNDS = {
    "greater_than": ("gt", ">"),
    "greater_than_equal": ("ge", "≥"),
    "less_than": ("lt", "<"),
    "less_than_equal": ("le", "≤"),
}


def _describe(err: dict) -> str:
    """What is allowed, from one pydantic error."""
    kind, ctx = err["type"], err.get("ctx") or {}
    if kind in _TYPES:
        return f"must be {_TYPES[kind]}"
    if kind in _BOUNDS:
        key, sign = _BOUNDS[kind]
        bound = ctx[key]
        return f"must be {sign} {bound:g}" if isinstance(bound, (int, float)) else f"must be {sign} {bound}"
    if kind == "literal_error":
        return f"must be one of {ctx['expected'].replace(' or ', ', ')}"
    if kind in ("too_short", "string_too_short"):
        return "must not be empty" if ctx.get("min_length") == 1 else f"needs at least {ctx['min_length']} items"
    if kind == "too_long":
        return f"takes at most {ctx['max_length']} items"
    if kind == "string_pattern_mismatch":
        return f"must match {ctx['pattern']}"
    if kind == "union_tag_invalid":
        return f"must be one of {ctx['expected_tags'].replace(' or ', ', ')}"
    if kind == "missing":
        return "missing (required)"
    return err["msg"].removeprefix("Value error, ")


def describe_error(err: dict) -> str:
    """One pydantic error → `key: what is allowed, got value`."""
    loc = [str(x) for x in err["loc"]]
    if len(loc) > 1 and loc[0] in _TAGS and loc[1] in _TAGS[loc[0]]:
        loc.pop(1)  # the discriminated union's branch, not a key
    if loc and loc[-1] == "[key]":  # a mapping's key that is not allowed (gate.limits.<metric>, a variant name)
        loc.pop()
    ctx, value, what = err.get("ctx") or {}, err.get("input"), None
    if "key" in ctx:  # a problem of one key below where it was found (unknown keys, cross-field rules)
        loc.append(ctx["key"])
        value = ctx.get("value")
    elif err["type"] == "unknown_source":  # workload.source
        loc.append("source")
        value = value.get("source") if isinstance(value, dict) else value
        what = f"must be one of {', '.join(WORKLOAD_SOURCES)}"
    key = ".".join(loc) or "params"
    what = what or _describe(err)
    if err["type"] in ("missing", "missing_limit"):
        return f"{key}: {what}"
    shown = repr(value)
    if len(shown) > 80:
        shown = shown[:77] + "…"
    return f"{key}: {what}, got {shown}"


def schema_error(e: ValidationError) -> ConfigError:
    errors = e.errors()
    more = f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})" if len(errors) > 1 else ""
    return ConfigError(describe_error(errors[0]).replace("\n", " ") + more)


# -- entry points -------------------------------------------------------------------------------------------
def validate_params(raw: Any) -> Params:
    """The schema alone: a `Params` or a one-line ConfigError."""
    if not isinstance(raw, dict):
        raise ConfigError(f"params: must be a mapping of sections, got {type(raw).__name__}")
    try:
        return Params.model_validate(raw)
    except ValidationError as e:
        raise schema_error(e) from None


def parse(raw: dict) -> Config:
    """Validate a composed params dict (schema only: no files, no engines loaded) into the `Config` view."""
    p = validate_params(raw)
    gate = _given(p.gate)
    gate["quality"] = {k: _given(v) for k, v in p.gate.quality.items()}
    variants = {BASELINE: _variant(BASELINE, p.baseline), **{n: _variant(n, s) for n, s in p.variants.items()}}
    m = p.model
    return Config(
        seed=p.seed,
        model=ModelSpec(source=m.source, id=m.id, draft=m.draft, revision=m.revision, dtype=m.dtype),
        engine=_given(p.engine) | {"name": p.engine.name},
        workload=_given(p.workload) | {"source": p.workload.source},
        eval=_given(p.eval),
        gate=gate,
        thresholds=tuple(Threshold(k, v.max_loss_abs, v.max_loss_rel_pct) for k, v in p.gate.quality.items()),
        slo=_given(p.gate.slo),
        limits={k: _given(v) for k, v in p.gate.limits.items()},
        load=_given(p.load),
        mlflow=_given(p.mlflow),
        report=_given(p.report),
        variants=variants,
        raw=raw,
        faults=p.faults.model_dump(),
    )


def parse_variant(name: str, spec: Any, where: str | None = None) -> Variant:
    """One variant's fields alone (engine tests, tools)."""
    where = where or f"variants.{name}"
    try:
        return _variant(name, VariantSpec.model_validate(spec))
    except ValidationError as e:
        raise ConfigError(f"{where}.{schema_error(e)}") from None


def fixture_params(raw: dict) -> dict:
    """The `fixture:` section (what the fixture stage trains from), after the whole params validate."""
    validate_params(raw)
    return raw["fixture"]
