"""Is a difference real? Intervals over seeds, a paired test on the test examples, a test over datasets.

- `interval`: the 95% Student-t interval of the mean over seeds (none for one seed: no spread is known).
- `paired_bootstrap`: method vs linear probe on the *same* test examples (pairing by split fingerprint):
  resample the examples with replacement (B = 2,000, seeded), recompute the dataset's metric of both (each
  averaged over its seeds), take the percentile interval of the difference and the two-sided p-value
  2 * min(P(d* <= 0), P(d* >= 0)). Works for top-1 and mean per-class accuracy alike.
- `wilcoxon`: per method, the Wilcoxon signed-rank test (two-sided) of its per-dataset deltas vs the probe.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats as sps

ALPHA = 0.05          # two-sided level of every test and 1 - coverage of every interval
RESAMPLES = 2_000     # bootstrap resamples of the test set
BOOTSTRAP_SEED = 0    # fixed: the table is a pure function of the records


def interval(scores: list[float], level: float = 1 - ALPHA) -> tuple[float, float] | None:
    """The Student-t interval of the mean of `scores` (one per seed); None for fewer than two seeds."""
    n = len(scores)
    if n < 2:
        return None
    mean, sd = float(np.mean(scores)), float(np.std(scores, ddof=1))
    half = sps.t.ppf(0.5 + level / 2, n - 1) * sd / math.sqrt(n)
    return mean - half, mean + half


def metric_of(correct: np.ndarray, y: np.ndarray, metric: str, num_classes: int) -> np.ndarray:
    """The metric (in %) of each row of `correct` [B, N] (seed-averaged 0..1 correctness of rows of y [B, N])."""
    if metric == "top1":
        return 100.0 * correct.mean(1)
    rows = np.arange(len(y))[:, None] * num_classes + y
    counts = np.bincount(rows.ravel(), minlength=len(y) * num_classes).reshape(len(y), num_classes)
    hits = np.bincount(rows.ravel(), weights=correct.ravel(), minlength=len(y) * num_classes)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_class = hits.reshape(len(y), num_classes) / counts
    return 100.0 * np.nanmean(per_class, axis=1)  # mean over the classes present in the resample


def paired_bootstrap(pred_a: np.ndarray, pred_b: np.ndarray, y: np.ndarray, *, metric: str,
                     resamples: int = RESAMPLES, seed: int = BOOTSTRAP_SEED, chunk: int = 100) -> dict:
    """Method a minus method b on the same test examples. pred_a [Sa, N] and pred_b [Sb, N] hold each
    seed's predicted classes; y [N] the labels. Returns the observed delta, its percentile interval and p."""
    y = np.asarray(y)
    # seed-averaged correctness per example, a minus b: both metrics are linear in it (with the class
    # counts of the same resample), so the metric of the difference is the difference of the metrics
    diff = (np.asarray(pred_a) == y).mean(0) - (np.asarray(pred_b) == y).mean(0)
    num_classes = int(y.max()) + 1
    observed = metric_of(diff[None], y[None], metric, num_classes)[0]
    rng, deltas = np.random.default_rng(seed), []
    for start in range(0, resamples, chunk):
        idx = rng.integers(0, len(y), (min(chunk, resamples - start), len(y)), dtype=np.int32)
        deltas.append(metric_of(diff[idx], y[idx], metric, num_classes))
    deltas = np.concatenate(deltas)
    lo, hi = np.percentile(deltas, [100 * ALPHA / 2, 100 * (1 - ALPHA / 2)])
    p = min(1.0, 2 * min((deltas <= 0).mean(), (deltas >= 0).mean()))
    return {"delta": float(observed), "lo": float(lo), "hi": float(hi), "p": float(p)}


def wilcoxon(deltas: list[float]) -> dict:
    """The two-sided Wilcoxon signed-rank test of per-dataset deltas; p None when it cannot be computed
    (fewer than two datasets, or every delta zero)."""
    nonzero = [d for d in deltas if d != 0]
    if len(deltas) < 2 or not nonzero:
        return {"n": len(deltas), "p": None}
    return {"n": len(deltas), "p": float(sps.wilcoxon(deltas).pvalue)}
