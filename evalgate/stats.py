"""Paired non-inferiority: is the variant's quality loss against the baseline below the margin δ?

Every sample is scored by both models (lm-eval's per-sample logs, paired by doc_id), so the test is on
the per-sample differences. Loss L = baseline − variant for higher-is-better metrics (the reverse
otherwise). With a one-sided (1 − α) interval [LCB, UCB] for L:
  non-inferior  UCB ≤ δ     the loss is below the margin with confidence 1 − α
  inferior      LCB > δ     the loss is above the margin with confidence 1 − α
  inconclusive  otherwise   too few samples to tell; `on_inconclusive` in params decides
Binary metrics (exact match, accuracy) use Newcombe's hybrid score interval for a difference of paired
proportions with continuity-corrected Wilson bounds and his continuity-corrected φ (Newcombe 1998, Stat Med
17:2635–2650, method 11), which keeps its coverage at small discordant counts where a
bootstrap collapses; scipy has no such interval, so it is
written here; without the correction of the Wilson bounds (method 10) a simulation at L = δ accepted
≈ 5.1 % of the time. tests/test_stats.py checks it against published limits. Other
metrics use scipy's paired bootstrap, including aggregate ones (word perplexity = exp(−Σll / Σwords)).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats


@dataclass
class Test:
    n: int
    loss: float          # point estimate of L
    lcb: float
    ucb: float
    margin: float
    mde: float           # loss this n detects with `power` at level α
    verdict: str         # non-inferior | inferior | inconclusive
    method: str

    def line(self, metric: str) -> str:
        return (f"{metric}: Δ={self.loss:+.4g} (one-sided bounds [{self.lcb:+.4g}, {self.ucb:+.4g}]) vs "
                f"δ={self.margin:.4g}, n={self.n}, MDE={self.mde:.3g} → {self.verdict}")

    def as_dict(self) -> dict:
        return asdict(self)


def _wilson_cc(x: int, n: int, z: float) -> tuple[float, float]:
    """Wilson score interval with continuity correction (Newcombe 1998, method 4)."""
    p, z2 = x / n, z * z
    lo = 0.0 if x == 0 else (2 * n * p + z2 - 1 - z * math.sqrt(z2 - 2 - 1 / n + 4 * p * (n * (1 - p) + 1))) / (2 * (n + z2))
    hi = 1.0 if x == n else (2 * n * p + z2 + 1 + z * math.sqrt(z2 + 2 - 1 / n + 4 * p * (n * (1 - p) - 1))) / (2 * (n + z2))
    return max(0.0, lo), min(1.0, hi)


def newcombe_paired(base: np.ndarray, var: np.ndarray, alpha: float) -> tuple[float, float, float]:
    """Point estimate and one-sided (1 − α) bounds of mean(base) − mean(var) for paired 0/1 outcomes."""
    base, var = np.asarray(base, bool), np.asarray(var, bool)
    n = len(base)
    a, b = int(np.sum(base & var)), int(np.sum(base & ~var))
    c, d = int(np.sum(~base & var)), int(np.sum(~base & ~var))
    p1, p2 = (a + b) / n, (a + c) / n
    z = stats.norm.ppf(1 - alpha)
    l1, u1 = _wilson_cc(a + b, n, z)
    l2, u2 = _wilson_cc(a + c, n, z)
    den = (a + b) * (c + d) * (a + c) * (b + d)
    num = a * d - b * c
    if num > 0:  # Newcombe's continuity correction of φ: without it no discordant pair gives a 0-width interval
        num = max(num - n / 2, 0)
    phi = num / math.sqrt(den) if den else 0.0
    diff = p1 - p2
    lo = diff - math.sqrt(max(0.0, (p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2))
    hi = diff + math.sqrt(max(0.0, (u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2))
    return diff, lo, hi


def paired_bootstrap(base: np.ndarray, var: np.ndarray, statistic, alpha: float, seed: int = 0,
                     n_resamples: int = 2000) -> tuple[float, float, float]:
    """Estimate and one-sided bounds of statistic(base) − statistic(var), resampling samples in pairs.

    `base`/`var` are (n, k) arrays (k columns per sample, e.g. loglikelihood and word count)."""
    def diff(b, v, axis=-1):
        return statistic(b, axis) - statistic(v, axis)

    data = (np.moveaxis(np.asarray(base, float), 0, -1), np.moveaxis(np.asarray(var, float), 0, -1))
    point = float(diff(*data))
    kw = dict(paired=True, vectorized=True, n_resamples=n_resamples, method="percentile", axis=-1,
              rng=np.random.default_rng(seed), confidence_level=1 - alpha)
    hi = stats.bootstrap(data, diff, alternative="less", **kw).confidence_interval.high
    lo = stats.bootstrap(data, diff, alternative="greater", **kw).confidence_interval.low
    return point, float(lo), float(hi)


def mde(sd_diff: float, n: int, alpha: float, power: float) -> float:
    """Smallest true loss a one-sided level-α test on n paired samples detects with `power`."""
    return (stats.norm.ppf(1 - alpha) + stats.norm.ppf(power)) * sd_diff / math.sqrt(n)


def verdict_of(loss: float, lcb: float, ucb: float, margin: float) -> str:
    """non-inferior (UCB ≤ δ), inferior (LCB > δ) or inconclusive."""
    if ucb <= margin:
        return "non-inferior"
    if lcb > margin:
        return "inferior"
    return "inconclusive"


def noninferiority(base: np.ndarray, var: np.ndarray, margin: float, higher_is_better: bool = True,
                   kind: str = "binary", statistic=None, alpha: float = 0.05, power: float = 0.8,
                   seed: int = 0) -> Test:
    """The paired test of one metric. `kind`: binary (0/1 per sample), mean (a per-sample score),
    or aggregate (`statistic(columns, axis)` over (n, k) samples, e.g. perplexity)."""
    base, var = np.asarray(base, float), np.asarray(var, float)
    if not higher_is_better:
        base, var = var, base          # loss = variant − baseline
    n = len(base)
    if kind == "binary":
        loss, lcb, ucb = newcombe_paired(base.astype(bool), var.astype(bool), alpha)
        sd = float(np.std(base - var, ddof=1)) if n > 1 else 0.0
        # with no discordant pair yet, size the MDE from the variance of a single flip rate at the margin
        sd = max(sd, math.sqrt(max(margin, 1.0 / n)))
        method = "Newcombe paired score"
    else:
        stat = statistic or (lambda x, axis: np.mean(x[0], axis=axis))  # x: the stacked columns, one here
        if base.ndim == 1:
            base, var = base[:, None], var[:, None]
        loss, lcb, ucb = paired_bootstrap(base, var, lambda x, axis: stat(x, axis), alpha, seed)
        sd = (ucb - lcb) / (2 * stats.norm.ppf(1 - alpha)) * math.sqrt(n)  # implied by the interval
        method = "paired bootstrap"
    return Test(n=n, loss=float(loss), lcb=float(lcb), ucb=float(ucb), margin=float(margin),
                mde=float(mde(sd, n, alpha, power)), verdict=verdict_of(loss, lcb, ucb, margin), method=method)


# lm-eval's aggregate metrics over per-sample (loglikelihood, weight) pairs, as functions of stacked
# columns: lm-eval logs the pairs, not a per-sample score, so the paired bootstrap recomputes them
AGGREGATES = {
    "word_perplexity": lambda x, axis: np.exp(-x[0].sum(axis=axis) / x[1].sum(axis=axis)),
    "byte_perplexity": lambda x, axis: np.exp(-x[0].sum(axis=axis) / x[1].sum(axis=axis)),
    "bits_per_byte": lambda x, axis: -x[0].sum(axis=axis) / x[1].sum(axis=axis) / math.log(2),
}


def pair(base: dict, var: dict):
    """Both sides' values (doc_id → value) on the docs both answered, in doc order (None: none in common)."""
    ids = sorted(set(base) & set(var))
    if not ids:
        return None
    return np.array([base[i] for i in ids], float), np.array([var[i] for i in ids], float)


def paired_test(base: np.ndarray, var: np.ndarray, metric: str, delta: float, up: bool, alpha: float,
                power: float = 0.8, seed: int = 0) -> Test | None:
    """The non-inferiority test of one lm-eval metric on paired per-sample values: binary when every value
    is 0/1, an aggregate recomputed from (loglikelihood, weight) pairs, else a mean (None: an aggregate
    metric it cannot recompute)."""
    if base.ndim == 2:
        kind, fn = "aggregate", AGGREGATES.get(metric)
        if fn is None:
            return None
    else:
        kind, fn = ("binary" if set(np.unique(np.r_[base, var])) <= {0.0, 1.0} else "mean"), None
    return noninferiority(base, var, delta, higher_is_better=up, kind=kind, statistic=fn, alpha=alpha,
                          power=power, seed=seed)
