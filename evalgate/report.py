"""The report: every variant's speed (per load level), quality and verdict; the best accepted variant
per load level (with "no difference" inside the run's noise); the A/A noise floor; speculation per
level; output lengths against the baseline's; and the pictures: quality vs throughput, throughput vs
latency per variant, output lengths, and the schedule's timeline.

For DVC (`dvc metrics show`, `dvc plots show`): `reports/metrics/<variant>.json`, a few headline
numbers per variant under short names, so `dvc metrics show` prints one row per variant; and the plots'
data, `reports/plots/quality.json` (every variant × every gated metric of `gate.quality`: the y axes
come from params, not from a fixed key; rejected and not-profiled variants marked; the Pareto frontier
flagged) and `reports/plots/levels.json` (every variant × load level). Full detail stays in each
variant's results folder.
"""
from __future__ import annotations

import json
from pathlib import Path

from evalgate.config import BASELINE, Config
from evalgate.metrics import gate_metric_key
from evalgate.results import AGAIN

SPEED = [("output_throughput", "peak tok/s", "{:.1f}"), ("c1/median_e2el_per_token_ms", "ms/token c1", "{:.2f}"),
         ("median_ttft_ms", "TTFT p50 ms", "{:.2f}"), ("median_tpot_ms", "TPOT p50 ms", "{:.2f}"),
         ("request_goodput", "goodput req/s", "{:.2f}"), ("mem_peak_mb", "peak mem MB", "{:.0f}")]
LENGTH = [("mean_output_tokens", "out tokens", "{:.1f}"), ("output_length_ratio", "× baseline", "{:.3f}")]
FIDELITY = [("fidelity/kl_mean", "KL", "{:.2g}"), ("fidelity/top1_agreement", "top-1 agree", "{:.3f}"),
            ("fidelity/answer_flip_rate", "flips", "{:.3f}")]
LEVEL_COLS = [("output_throughput", "tok/s", "{:.1f}"), ("request_goodput", "goodput", "{:.2f}"),
              ("median_ttft_ms", "TTFT p50", "{:.1f}"), ("median_tpot_ms", "TPOT p50", "{:.2f}"),
              ("p99_e2el_ms", "E2EL p99", "{:.0f}"), ("ci_pct", "±% (95 %)", "{:.1f}"),
              ("client_cpu_pct", "client CPU %", "{:.0f}"), ("host_cpu_pct", "host CPU %", "{:.0f}"),
              ("host_steal_pct", "steal %", "{:.1f}")]


def _fmt(v, f: str) -> str:
    return "–" if v is None else f.format(v)


def quality_keys(thresholds) -> list[str]:
    """The gated metrics, in the order of gate.quality."""
    return list(dict.fromkeys(gate_metric_key(t.metric) for t in thresholds))


def rows(keys: list[str], results: dict, gate: dict) -> list[dict]:
    """One row per variant: verdict, speed, output length, the gated metrics (`keys`), fidelity."""
    base = results.get(gate["baseline"], {}).get("metrics", {})
    out = []
    for name, v in gate["variants"].items():
        m = results.get(name, {}).get("metrics", {})
        thr, bthr = m.get("output_throughput"), base.get("output_throughput")
        out.append({"variant": name, "verdict": v["verdict"], "reason": v["reason"], "warnings": v.get("warnings", []),
                    "speedup_pct": 100 * (thr / bthr - 1) if thr and bthr else None,
                    **{k: m.get(k) for k, _, _ in SPEED + LENGTH + FIDELITY}, **{k: m.get(k) for k in keys}})
    return out


def levels_of(results: dict) -> list[str]:
    """Every level name measured, ladder first (by concurrency), then the rate levels."""
    names = {k.split("/")[0] for r in results.values() for k in r.get("metrics", {})
             if k.count("/") == 1 and k.endswith("/output_throughput") and k.split("/")[0] not in AGAIN}
    ladder = sorted((n for n in names if n[1:].isdigit()), key=lambda n: int(n[1:]))
    return ladder + sorted(n for n in names if not n[1:].isdigit())


def best_line(gate: dict, rank_by: str) -> str:
    """The report's first line: the best accepted variant, and those it does not beat beyond the noise."""
    if not gate["best"]:
        return "**No variant was accepted.**"
    tied = gate.get("best_within_noise") or []
    return (f"**Best accepted variant (by `{rank_by}`): `{gate['best']}`**"
            + (f"; no difference from {', '.join(f'`{n}`' for n in tied)} within this run's noise" if tied else ""))


def markdown(cfg: Config, table: list[dict], gate: dict, results: dict, phase_times: dict | None = None) -> str:
    q = quality_keys(cfg.thresholds)
    workload = cfg.workload
    lines = [f"# Variant report: {cfg.model.id} on `{cfg.engine['name']}`", "",
             best_line(gate, cfg.report.get("rank_by", "output_throughput")), ""]
    lines += _per_level(gate)
    head = ["variant", "verdict", *[h for _, h, _ in SPEED], "Δ peak %", *[h for _, h, _ in LENGTH],
            *[k.removeprefix("lmeval/") for k in q], *[h for _, h, _ in FIDELITY]]
    lines += ["## Variants", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in table:
        cells = [f"`{r['variant']}`", ("✅ accept" if r["verdict"] == "accept" else "❌ reject")
                 + (" ⚠" if r.get("warnings") else ""),   # the Verdicts section says what about
                 *[_fmt(r[k], f) for k, _, f in SPEED], _fmt(r["speedup_pct"], "{:+.1f}"),
                 *[_fmt(r[k], f) for k, _, f in LENGTH], *[_fmt(r[k], "{:.4f}") for k in q],
                 *[_fmt(r[k], f) for k, _, f in FIDELITY]]
        lines.append("| " + " | ".join(cells) + " |")
    slo = ", ".join(f"{k.removesuffix('_ms')} ≤ {v:g} ms" for k, v in cfg.slo.items()) or "none"
    ended = ("its max_tokens (EOS ignored: a capacity test)" if workload.get("ignore_eos")
             else "EOS or a stop sequence, capped at max_tokens")
    name = workload.get("name", workload["source"])
    lines += ["", f"Workload `{name}`: the same requests for every variant, each ended by {ended}. "
              f"Peak tok/s: the best output throughput over the concurrency ladder; latency and TTFT/TPOT at "
              f"concurrency 1; ms/token: E2E latency per output token (speed normalised by what was produced); "
              f"goodput: requests/s meeting the SLO ({slo}), the best level. Out tokens: mean output length at "
              f"concurrency 1, × baseline on the same greedy prompts (gated: {cfg.gate.get('output_length') or 'off'})."]
    lines += _noise(gate, bool(cfg.load.get("hold_neighbours", True))) + _host_moves(results) + _host_steal(results)
    lines += _levels_table(results) + _gguf_measures(cfg, results)
    lines += _speculation(gate) + _verdicts(table, gate)
    if phase_times:
        cols = sorted({c for t in phase_times.values() for c in t})
        lines += ["", "## Time per phase (s)", "", "| variant | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
        lines += [f"| `{n}` | " + " | ".join(_fmt(t.get(c), "{:.1f}") for c in cols) + " |" for n, t in phase_times.items()]
    return "\n".join(lines) + "\n"


def _per_level(gate: dict) -> list[str]:
    sel = gate.get("best_per_level") or {}
    if not sel:
        return []
    lines = ["## Best per load level", "", "| level | metric | best | runner-up (gap) | noise ±% |", "|---|---|---|---|---|"]
    for level, r in sel.items():
        order, vals = r["ranking"], r["values"]
        if r["best"]:
            best = f"`{r['best']}` ({vals[r['best']]:.4g})"
        else:
            best = "no difference: " + ", ".join(f"`{n}`" for n in r["no_difference"])
        if len(order) > 1:
            a, b = vals[order[0]], vals[order[1]]
            gap = f"`{order[1]}` ({100 * abs(a - b) / abs(a) if a else 0:.1f} %)"
        else:
            gap = "–"
        noise = max(r["noise_pct"].values()) if r["noise_pct"] else 0
        lines.append(f"| {level} | `{r['metric']}` | {best} | {gap} | {noise:.1f} |")
    return lines + ["", "A variant wins a level only by more than the noise: the larger of the baseline's A/A "
                    "difference on that metric and the level's 95 % interval; otherwise \"no difference\".", ""]


def _noise(gate: dict, held: bool = True) -> list[str]:
    """The A/A table; `held`: the scheduled sweeps ran with the idle neighbours held still (SIGSTOP)."""
    floor, alone = gate.get("noise_floor_pct") or {}, gate.get("alone_check_pct") or {}
    keys = [k for k in ("output_throughput", "request_throughput", "request_goodput", "median_ttft_ms",
                        "median_tpot_ms", "median_e2el_per_token_ms", "p99_e2el_ms") if k in floor]
    if not keys:
        return []
    beside = "the same idle neighbours held still" if held else "beside the same idle neighbours"
    lines = ["", "## Noise floor (A/A)", "", "The baseline profiled twice in this run — scheduled: first and last, "
             f"{beside}; serial: back to back — as |A − A′| / mean, per metric:", "",
             "| sweeps | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys),
             "| A/A | " + " | ".join(f"{floor[k]:.1f} %" for k in keys) + " |"]
    if alone:   # load.alone_check: what the idle neighbours did to the first sweep
        lines.append("| first (idle neighbours) vs alone | " + " | ".join(
            f"{alone[k]:.1f} %" if k in alone else "–" for k in keys) + " |")
    return lines


def _host_moves(results: dict) -> list[str]:
    """Per baseline level, each later sweep against the first: its output throughput beside the host's CPU
    speed (evalgate.profile.cpu_probe_us: the time of a fixed Python loop, lower is faster) and the card's
    SM clock, so a reader sees whether the machine or the engine moved between two sweeps of one server."""
    m = results.get(BASELINE, {}).get("metrics", {})
    rows = []
    for lv in levels_of(results):
        for s in AGAIN:
            if f"sweep_{s}/{lv}/output_throughput" not in m:
                continue
            cells = []
            for k, f in (("output_throughput", "{:.0f}"), ("cpu_probe_us", "{:.0f} µs"), ("sm_clock_mhz", "{:.0f} MHz")):
                a, b = m.get(f"{lv}/{k}"), m.get(f"sweep_{s}/{lv}/{k}")
                if a is None or b is None:
                    cells.append("–")
                else:
                    cells.append(f"{f.format(a)} → {f.format(b)}" + (f" ({100 * (b - a) / a:+.1f} %)" if a else ""))
            rows.append(f"| {lv} | {s} | " + " | ".join(cells) + " |")
    if not rows:
        return []
    return ["", "What moved between the baseline's sweeps (first → again): its output tok/s, the host's CPU speed "
            "(a fixed Python loop, lower is faster) and the card's SM clock, per level:", "",
            "| level | sweep | output tok/s | CPU loop | SM clock |", "|---|---|---|---|---|", *rows]


STEAL_PCT = 0.5   # H100 host, 2026-11-26: sweeps 15-48 % slower had 0.7-2.6 % steal, quiet ones <= 0.2 %


def _host_steal(results: dict) -> list[str]:
    """The baseline's levels where the hypervisor took CPU (steal ≥ STEAL_PCT of all cores) in either
    sweep: there a shared host, not the engine, moved the A/A (small models on vLLM are CPU-bound)."""
    m = results.get(BASELINE, {}).get("metrics", {})
    hit = []
    for k, first in m.items():
        if not k.endswith("/host_steal_pct") or k.startswith("sweep_"):
            continue
        level = k.split("/")[0]
        again = {s: m.get(f"sweep_{s}/{k}") for s in AGAIN if f"sweep_{s}/{k}" in m}
        if max([first, *again.values()]) >= STEAL_PCT:
            hit.append(f"{level} (first {first:.2f} %" + "".join(f", {s} {v:.2f} %" for s, v in again.items()) + ")")
    if not hit:
        return []
    return ["", f"Host CPU taken by the hypervisor (steal ≥ {STEAL_PCT:g} % of all cores) during the baseline's "
            f"{', '.join(hit)}: on a shared host these levels' A/A difference is the host's, not the engine's."]


def _levels_table(results: dict) -> list[str]:
    levels = levels_of(results)
    if not levels:
        return []
    lines = ["", "## Load levels", "", "Concurrency levels `cN` (N requests in flight), request-rate levels "
             "`rFx` (Poisson arrivals at F × the baseline's peak request rate).", "",
             "| variant | level | " + " | ".join(h for _, h, _ in LEVEL_COLS) + " |", "|---|---|" + "---|" * len(LEVEL_COLS)]
    for name, r in results.items():
        m = r.get("metrics", {})
        for lv in levels:
            if f"{lv}/output_throughput" in m:
                lines.append(f"| `{name}` | {lv}" + ("" if not m.get(f"{lv}/saturated") else " (saturated)") + " | "
                             + " | ".join(_fmt(m.get(f"{lv}/{k}"), f) for k, _, f in LEVEL_COLS) + " |")
    return lines


GGUF_COLS = [("gguf_bits_per_weight", "bits/weight", "{:.2f}"), ("disk_model_mb", "GGUF MiB", "{:.2f}"),
                 ("llama_bench/tg_tok_s", "llama-bench tg tok/s", "{:.0f}"),
                 ("llama_bench/tg_ms_per_token", "tg ms/token", "{:.3f}"), ("llama_bench/pp_tok_s", "pp tok/s", "{:.0f}"),
                 ("fidelity/kl_mean", "KLD mean", "{:.4f}"), ("fidelity/kl_p99", "KLD p99", "{:.4f}"),
                 ("fidelity/top1_agreement", "same top token", "{:.3f}"), ("fidelity/ppl_ratio", "PPL ratio", "{:.4f}")]


def _gguf_measures(cfg, results: dict) -> list[str]:
    """llama.cpp's own measures, when the engine produced them: the weights as stored, llama-bench's
    speed without HTTP, and llama-perplexity's KL divergence against the baseline."""
    named = [(n, r.get("metrics", {})) for n, r in results.items()]
    if not any("llama_bench/tg_tok_s" in m or "gguf_bits_per_weight" in m for _, m in named):
        return []
    lines = ["", "## llama.cpp: weights, llama-bench, llama-perplexity", "",
             "bits/weight: the GGUF's tensors as stored (a K-quant needs rows of 256 weights; narrower tensors fall "
             "back to another type); llama-bench: token generation (tg) and prompt processing (pp) without HTTP, "
             "with the variant's KV-cache and flash-attention flags; KLD, same top token, PPL ratio: "
             "llama-perplexity --kl-divergence against the baseline's logits on the fidelity texts.", "",
             "| variant | weights | " + " | ".join(h for _, h, _ in GGUF_COLS) + " |",
             "|---|---|" + "---|" * len(GGUF_COLS)]
    for name, m in named:
        v = cfg.variants.get(name)
        q = v.quantization["method"] if v else "?"
        lines.append(f"| `{name}` | {'F16' if q == 'none' else q.upper()} | "
                     + " | ".join(_fmt(m.get(k), f) for k, _, f in GGUF_COLS) + " |")
    return lines


def _speculation(gate: dict) -> list[str]:
    spec = gate.get("speculation") or {}
    if not spec:
        return []
    lines = ["", "## Speculative decoding", ""]
    for name, s in spec.items():
        ident = s.get("identical_output_share")
        lines.append(f"- `{name}`: " + (f"greedy outputs identical to the baseline's: {100 * ident:.1f} %; "
                                        if ident is not None else "")
                     + (f"stops paying at {s['stops_paying_at']}" if s.get("stops_paying_at")
                        else "faster at every level measured"))
        for lv, row in s.get("levels", {}).items():
            acc = "" if row.get("acceptance_rate") is None else f", acceptance {row['acceptance_rate']:.1f} %"
            length = "" if row.get("acceptance_length") is None else f", mean accepted length {row['acceptance_length']:.2f}"
            lines.append(f"  - {lv}: {row['speedup_pct']:+.1f} % vs baseline (noise ±{row['noise_pct']:.1f} %){acc}{length}")
    return lines


def _verdicts(table: list[dict], gate: dict) -> list[str]:
    lines = ["", "## Verdicts", "", "Each line: Δ = quality loss against the baseline (positive = worse), its "
             "one-sided confidence bounds, the margin δ, the paired sample count n, and the minimum detectable "
             "effect at that n.", ""]
    for r in table:
        checks = gate["variants"][r["variant"]]["checks"]
        lines.append(f"- `{r['variant']}`: **{r['verdict']}** — {r['reason'] if not checks else ''}".rstrip(" —"))
        lines += [f"  - {'✅' if c['passed'] else '❌'} {c['reason']}" for c in checks]
        lines += [f"  - ⚠ warning: {w}" for w in r.get("warnings", [])]
        early = gate["variants"][r["variant"]].get("early_rejection")
        if early and early.get("kind", "sequential") == "sequential":
            saved = ("" if early.get("eval_s_saved") is None
                     else f", {early['eval_s_saved']:.1f} s saved against the baseline's full eval")
            lines.append(f"  - ⏹ stopped early at look {early['look']} of {early['looks']} (α = {early['alpha_per_look']:g} "
                         f"per look): {early['docs_evaluated']} of {early['docs_total']} docs evaluated in "
                         f"{early['eval_s']:.1f} s{saved}; not profiled")
        elif early:
            lines.append("  - ⏹ stopped by the fidelity screen before any evaluation; not profiled")
    return lines


def level_rows(results: dict, verdicts: dict) -> list[dict]:
    """One row per variant and level, for `dvc plots` and the curves picture."""
    out = []
    for name, r in results.items():
        m = r.get("metrics", {})
        for lv in levels_of(results):
            if f"{lv}/output_throughput" in m:
                out.append({"variant": name, "level": lv, "verdict": verdicts.get(name, {}).get("verdict"),
                            "label": f"{name} {lv}",
                            **{k: m.get(f"{lv}/{k}") for k in ("output_throughput", "request_throughput",
                                                              "request_goodput", "median_e2el_per_token_ms",
                                                              "median_tpot_ms", "median_ttft_ms", "p99_e2el_ms")}})
    return out


# the headline per variant for `dvc metrics show`: short names, one row per variant
HEADLINE = {"peak_tok_s": "output_throughput", "speedup_pct": None, "ms_per_tok_c1": "c1/median_e2el_per_token_ms",
            "mem_mb": "mem_peak_mb"}


def short_name(key: str) -> str:
    """`lmeval/fx_add/exact_match/none` → `fx_add/exact_match` (the filter only when it is not `none`)."""
    parts = key.removeprefix("lmeval/").split("/")
    return "/".join(parts[:-1] if parts[-1] == "none" else parts)


def column_names(keys: list[str]) -> dict[str, str]:
    """The gated metrics' columns in `dvc metrics show`: the task alone where one metric of it is gated."""
    tasks = [short_name(k).split("/")[0] for k in keys]
    return {k: t if tasks.count(t) == 1 and k.startswith("lmeval/") else short_name(k) for k, t in zip(keys, tasks)}


def headline(table: list[dict], results: dict, keys: list[str]) -> dict[str, dict]:
    """Per variant: accepted (1/0), the headline speed numbers and the gated metrics, rounded (every
    metric stays in the variant's metrics.json)."""
    columns = column_names(keys)
    out = {}
    for r in table:
        m = results.get(r["variant"], {}).get("metrics", {})
        row = {"accepted": int(r["verdict"] == "accept")}
        for short, key in HEADLINE.items():
            v = r.get("speedup_pct") if key is None else m.get(key)
            if isinstance(v, (int, float)):
                row[short] = round(v, 2)
        for key in keys:
            if isinstance(m.get(key), (int, float)):
                row[columns[key]] = round(m[key], 4)
        out[r["variant"]] = row
    return out


def _status(row: dict) -> str:
    if row["verdict"] == "accept":
        return "accepted"
    return "rejected" if row.get("output_throughput") is not None else "rejected, not profiled"


def quality_points(table: list[dict], keys: list[str], directions: dict[str, bool]) -> list[dict]:
    """Every variant × every gated metric (`keys`, from gate.quality): its value against peak throughput,
    its status (accepted / rejected / rejected, not profiled: drawn at 0 tok/s), and whether it is on
    the Pareto frontier of that metric (no other profiled variant is at least as fast and as good, and
    better in one; the direction of each metric from lm-eval's `higher_is_better`, `directions`)."""
    out = []
    for key in keys:
        up = directions.get(key, True)
        pts = [{"variant": r["variant"], "metric": short_name(key), "value": r.get(key), "verdict": r["verdict"],
                "status": _status(r), "peak_tok_s": r.get("output_throughput") or 0.0, "higher_is_better": up}
               for r in table if r.get(key) is not None]
        profiled = [p for p in pts if p["status"] != "rejected, not profiled"]

        def better(a, b, up=up):   # a dominates b
            ge_q = a["value"] >= b["value"] if up else a["value"] <= b["value"]
            gt_q = a["value"] > b["value"] if up else a["value"] < b["value"]
            return a["peak_tok_s"] >= b["peak_tok_s"] and ge_q and (a["peak_tok_s"] > b["peak_tok_s"] or gt_q)

        for p in pts:
            p["frontier"] = p in profiled and not any(better(o, p) for o in profiled if o is not p)
        _place_labels(pts)
        out += pts
    return out


LABEL_ROWS = (0, 1, 2, -1, -2, 3, -3)   # label rows above (+) and below (−) a point, in the order tried


def _place_labels(pts: list[dict]) -> None:
    """Give each point's name a row (`label_row`) so that names of points close together do not overlap:
    points nearer than a name's width along x and 6 % of the span along y take different rows, in x order.
    `label_value` is where the name goes on the y axis (the Vega-Lite template draws it there)."""
    if not pts:
        return
    xs, ys = [p["peak_tok_s"] for p in pts], [p["value"] for p in pts]
    x_span = (max(xs) - min(xs)) or 1.0
    y_span = (max(ys) - min(ys)) or max(0.05 * abs(ys[0]), 0.01)   # all equal: a span the axis will show
    placed: list[dict] = []
    for p in sorted(pts, key=lambda p: (p["peak_tok_s"], p["variant"])):
        near = {q["label_row"] for q in placed
                if abs(q["peak_tok_s"] - p["peak_tok_s"]) < 0.25 * x_span and abs(q["value"] - p["value"]) < 0.06 * y_span}
        p["label_row"] = next((r for r in LABEL_ROWS if r not in near), 0)
        p["label_value"] = p["value"] + (p["label_row"] + 0.4) * 0.07 * y_span
        placed.append(p)


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


COLORS = {"accepted": "tab:green", "rejected": "tab:red", "rejected, not profiled": "tab:gray"}


def pareto_png(points: list[dict], path: Path) -> None:
    """One panel per gated metric: quality against peak output throughput for every variant (green
    accepted, red rejected, grey rejected before any profile, at 0 tok/s; ★ the baseline), each point
    named, and the Pareto frontier as a line."""
    plt = _plt()
    metrics = list(dict.fromkeys(p["metric"] for p in points)) or ["quality"]
    cols = min(2, len(metrics))
    rows_n = -(-len(metrics) // cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(6.5 * cols, 4.2 * rows_n), dpi=110, squeeze=False)
    for ax, metric in zip(axes.flat, metrics):
        pts = [p for p in points if p["metric"] == metric]
        front = sorted((p for p in pts if p["frontier"]), key=lambda p: p["peak_tok_s"])
        if len(front) > 1:
            ax.step([p["peak_tok_s"] for p in front], [p["value"] for p in front], where="post", color="tab:blue",
                    alpha=0.6, lw=1.5, zorder=2, label="Pareto frontier")
        ax.scatter([p["peak_tok_s"] for p in front], [p["value"] for p in front], s=260, facecolors="none",
                   edgecolors="tab:blue", linewidths=1.5, zorder=2)   # frontier points ringed (one alone too)
        for star in (False, True):   # one scatter per marker, not per point: the artists are most of the drawing
            group = [p for p in pts if (p["variant"] == BASELINE) == star]
            if group:
                ax.scatter([p["peak_tok_s"] for p in group], [p["value"] for p in group], s=90 if star else 50,
                           c=[COLORS[p["status"]] for p in group], marker="*" if star else "o", edgecolors="black",
                           linewidths=0.4, zorder=3)
        for p in pts:
            ax.annotate(p["variant"], (p["peak_tok_s"], p["value"]), textcoords="offset points",
                        xytext=(6, 3 + 10 * p.get("label_row", 0)),
                        fontsize=7.5, zorder=4)
        ax.set_xlabel("peak output throughput (tok/s)")
        ax.set_ylabel(metric)
        up = pts[0]["higher_is_better"] if pts else True
        ax.set_title(f"{metric} ({'higher' if up else 'lower'} is better)", fontsize=10)
        ax.grid(alpha=0.3)
        ax.margins(x=0.15, y=0.3)   # room for the names above and below the points
    for ax in list(axes.flat)[len(metrics):]:
        ax.axis("off")
    handles = [plt.Line2D([], [], ls="", marker="o", color=c, label=s) for s, c in COLORS.items()]
    handles.append(plt.Line2D([], [], color="tab:blue", marker="o", markerfacecolor="none", markersize=10,
                              label="Pareto frontier"))
    fig.legend(handles=handles, loc="lower center", ncol=4, fontsize=8, frameon=False)
    fig.suptitle("quality vs throughput per gated metric (★ baseline)", fontsize=11)
    fig.tight_layout(rect=(0, 0.05, 1, 0.97))
    fig.savefig(path)
    plt.close(fig)


def curves_png(rows_: list[dict], path: Path) -> None:
    """Throughput against latency per output token, one line per variant over its concurrency ladder
    (rate levels as hollow markers): up and to the left is better."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.5, 4.8), dpi=120)
    for name in dict.fromkeys(r["variant"] for r in rows_):
        pts = [r for r in rows_ if r["variant"] == name and r["median_e2el_per_token_ms"] and r["output_throughput"]]
        ladder = [r for r in pts if r["level"][1:].isdigit()]
        style = "-" if any(r["verdict"] == "accept" for r in pts) else ":"
        line, = ax.plot([r["median_e2el_per_token_ms"] for r in ladder], [r["output_throughput"] for r in ladder],
                        style, marker="*" if name == BASELINE else "o", label=name)
        for r in ladder:
            ax.annotate(r["level"], (r["median_e2el_per_token_ms"], r["output_throughput"]), fontsize=6,
                        textcoords="offset points", xytext=(3, 3))
        rates = [r for r in pts if not r["level"][1:].isdigit()]
        ax.scatter([r["median_e2el_per_token_ms"] for r in rates], [r["output_throughput"] for r in rates],
                   facecolors="none", edgecolors=line.get_color())
    ax.set_xlabel("median E2E latency per output token (ms)")
    ax.set_ylabel("output throughput (tok/s)")
    ax.set_title("throughput vs latency per variant (dotted: rejected)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def output_lengths_png(stores: dict, path: Path) -> None:
    """Each variant's output lengths at concurrency 1 (the same greedy prompts) beside the baseline's."""
    plt = _plt()
    data, names = [], []
    for name, store in stores.items():
        prof = _readable(store.profile)
        if prof is not None:
            lv = prof["levels"][0]
            data.append([r["output_tokens"] for r in lv["requests"] if r.get("ok", True)])
            names.append(name)
    fig, ax = plt.subplots(figsize=(max(5.0, 1.1 * len(names) + 2), 4), dpi=120)
    if data:
        ax.boxplot(data, showmeans=True)
        ax.set_xticks(range(1, len(names) + 1), names, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("output tokens per request")
    ax.set_title("output lengths at concurrency 1 (same prompts, greedy)")
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


PHASE_COLORS = {"start": "tab:gray", "quality": "tab:blue", "profile": "tab:orange", "profile_aa": "tab:red"}


def timeline(stores: dict) -> dict[str, list[dict]]:
    """The phases each variant's run went through (its timeline.json)."""
    return {name: tl["events"] for name, store in stores.items() if (tl := _readable(store.timeline))}


def _readable(read):
    """A results file, or None when it is unreadable (the gate has rejected that variant with the reason)."""
    try:
        return read()
    except ValueError:
        return None


def timeline_png(events: dict[str, list[dict]], path: Path) -> None:
    """One row per server: start, quality (fidelity + eval), profile; seconds from the first start."""
    plt = _plt()
    t0 = min((e["start"] for evs in events.values() for e in evs), default=0.0)
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(events) + 1.5), dpi=120)
    for i, evs in enumerate(events.values()):
        for e in evs:
            ax.barh(i, e["end"] - e["start"], left=e["start"] - t0, color=PHASE_COLORS.get(e["phase"], "tab:green"),
                    edgecolor="black", linewidth=0.3)
    ax.set_yticks(range(len(events)), list(events), fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("seconds since the first server start")
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in PHASE_COLORS.values()]
    ax.legend(handles, list(PHASE_COLORS), fontsize=7, loc="lower right")
    ax.set_title("schedule: one row per server")
    ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_report(cfg: Config, results, gate: dict, out: Path, pool=None) -> tuple[list[dict], list[Path]]:
    """The `report` stage's files in `out`; returns the per-variant table and the files for MLflow.
    `pool`: an executor whose worker processes draw the pictures side by side (`evalgate repro`: forked
    from its forkserver); without one they are drawn here, one after another."""
    from evalgate.gate import higher_is_better

    names = list(cfg.variants)
    stores = {n: results.variant(n) for n in names}
    loaded = {n: s.load() for n, s in stores.items()}
    keys = quality_keys(cfg.thresholds)
    table = rows(keys, loaded, gate)
    out.mkdir(parents=True, exist_ok=True)
    phases = {n: {k.removeprefix("time/"): v for k, v in r["metrics"].items() if k.startswith("time/") and k.count("/") == 1}
              for n, r in loaded.items() if r["status"].get("ok")}
    (out / "summary.md").write_text(markdown(cfg, table, gate, loaded, phases))
    (out / "variants.json").write_text(json.dumps(table, indent=1))
    metrics_dir = out / "metrics"
    metrics_dir.mkdir(exist_ok=True)
    for old in metrics_dir.glob("*.json"):
        old.unlink()
    for name, row in headline(table, loaded, keys).items():
        (metrics_dir / f"{name}.json").write_text(json.dumps(row, indent=1))
    base_dirs = loaded.get(BASELINE, {}).get("higher_is_better", {})
    points = quality_points(table, keys, {k: higher_is_better(k, base_dirs) for k in keys})
    levels = level_rows(loaded, gate["variants"])
    plots = out / "plots"
    plots.mkdir(exist_ok=True)
    (plots / "quality.json").write_text(json.dumps(points, indent=1))
    (plots / "levels.json").write_text(json.dumps(levels, indent=1))
    pictures = [out / "pareto.png", out / "curves.png", out / "output_lengths.png", out / "timeline.png"]
    draw([(pareto_png, points), (curves_png, levels), (output_lengths_png, stores), (timeline_png, timeline(stores))],
         pictures, pool)
    return table, [out / "summary.md", *pictures]


def draw(jobs: list[tuple], paths: list[Path], pool=None) -> None:
    """Each picture function with its data and its path; in `pool`'s processes when given. Matplotlib
    draws in one thread (its artists and text layout are Python, under one lock): processes are what
    puts the four pictures side by side. They were ≈ 1.6 s one after another on the 2-core CPU
    (2026-11-27), paid after the last profile of a scheduled run, before the verdict."""
    if pool is None:
        for (fn, data), path in zip(jobs, paths):
            fn(data, path)
        return
    for f in [pool.submit(fn, data, path) for (fn, data), path in zip(jobs, paths)]:
        f.result()   # a picture's error, raised here as it would be inline
