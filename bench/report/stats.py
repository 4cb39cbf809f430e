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
from fractions import Fraction

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


def exact_signs(wins: np.ndarray, y: np.ndarray, metric: str, num_classes: int, approx: np.ndarray) -> np.ndarray:
    """The exact sign (-1, 0, 1) of each resample's difference. `wins` [B, N] holds integers (per example,
    a's correct seeds x Sb minus b's x Sa: the difference in units of 1/(Sa Sb)), so top-1's sign is that of
    an integer sum; mean per-class accuracy's is that of a sum of fractions (class sum / class count), taken
    exactly with `fractions.Fraction` on the resamples whose float value is too near 0 to trust its sign."""
    if metric == "top1":
        return np.sign(wins.sum(1))
    signs = np.sign(approx).astype(int)
    for b in np.flatnonzero(np.abs(approx) < 1e-6):  # float error here is ~1e-12: only these can be wrong
        sums = np.bincount(y[b], weights=wins[b], minlength=num_classes)
        counts = np.bincount(y[b], minlength=num_classes)
        exact = sum(Fraction(int(s), int(c)) for s, c in zip(sums, counts) if c)
        signs[b] = (exact > 0) - (exact < 0)
    return signs


def paired_bootstrap(pred_a: np.ndarray, pred_b: np.ndarray, y: np.ndarray, *, metric: str,
                     resamples: int = RESAMPLES, seed: int = BOOTSTRAP_SEED, chunk: int = 100) -> dict:
    """Method a minus method b on the same test examples. pred_a [Sa, N] and pred_b [Sb, N] hold each
    seed's predicted classes; y [N] the labels. Returns the observed delta, its percentile interval, p and
    `ties` (resamples whose difference is exactly 0). p = 2 min(#{d* <= 0}, #{d* >= 0}) / B, counted on the
    exact signs (`exact_signs`): a tie counts on both sides, never as a float's -1e-16."""
    y = np.asarray(y)
    a, b = np.asarray(pred_a) == y, np.asarray(pred_b) == y
    # per example, in units of 1 / (Sa Sb): a's correct seeds x Sb - b's x Sa (an integer)
    wins = a.sum(0).astype(np.int64) * len(b) - b.sum(0).astype(np.int64) * len(a)
    diff = wins / (len(a) * len(b))  # seed-averaged correctness, a minus b: both metrics are linear in it
    num_classes = int(y.max()) + 1
    observed = metric_of(diff[None], y[None], metric, num_classes)[0]
    rng, deltas, signs = np.random.default_rng(seed), [], []
    for start in range(0, resamples, chunk):
        idx = rng.integers(0, len(y), (min(chunk, resamples - start), len(y)), dtype=np.int32)
        deltas.append(metric_of(diff[idx], y[idx], metric, num_classes))
        signs.append(exact_signs(wins[idx], y[idx], metric, num_classes, deltas[-1]))
    deltas, signs = np.concatenate(deltas), np.concatenate(signs)
    deltas[signs == 0] = 0.0  # an exact tie is 0, not a float's rounding of it
    lo, hi = np.percentile(deltas, [100 * ALPHA / 2, 100 * (1 - ALPHA / 2)])
    p = min(1.0, 2 * min(int((signs <= 0).sum()), int((signs >= 0).sum())) / len(signs))
    return {"delta": float(observed), "lo": float(lo), "hi": float(hi), "p": float(p),
            "ties": int((signs == 0).sum()), "resamples": len(signs)}


def p_text(p: float, resamples: int = RESAMPLES) -> str:
    """A bootstrap p as printed: `< 2/B` when no resample fell on the other side (p's resolution is 2/B:
    the two-sided p doubles a count out of B), else its value."""
    if math.isnan(p):  # untested
        return ""
    return f"< 2/{resamples}" if p == 0 else f"{p:.3g}"


ZERO_METHOD = "wilcox"  # scipy's default, said in the legend: a zero difference is dropped (n counts the others)


def wilcoxon(deltas: list[float]) -> dict:
    """The two-sided Wilcoxon signed-rank test of per-dataset deltas (scipy, zero_method='wilcox': zero
    differences dropped; exact null distribution for these small n). `n` datasets, `nonzero` of them with a
    difference, `p` None when it cannot be computed (no non-zero difference), `min_p` the smallest p the
    test can give with that many differences (2 / 2^nonzero: every sign alike), so a reader sees when
    p < 0.05 was out of reach."""
    nonzero = [d for d in deltas if d != 0]
    out = {"n": len(deltas), "nonzero": len(nonzero), "min_p": min(1.0, 2.0 ** (1 - len(nonzero))) if nonzero else None}
    if not nonzero:
        return out | {"p": None}
    return out | {"p": float(sps.wilcoxon(deltas, zero_method=ZERO_METHOD).pvalue)}
