"""Statistics over seeds: mean and spread, confidence intervals, the paired test, verdicts.

Every comparison in the study pairs two conditions run with the same seeds (same initial
parameters, same shuffle seed, same held-out set), so it is judged on the per-seed differences
`a_i - b_i`: their mean, a Student-t confidence interval and a two-sided paired t-test. A
percentile bootstrap interval of a mean is given beside the t interval for readers who distrust
normality at 3-5 seeds.

`verdict` turns a paired comparison into `supported` / `not supported` / `inconclusive` by
fixed rules (no hand-picked outcomes):
  - fewer than 2 seeds: inconclusive (no interval);
  - every value on both sides the same constant (e.g. 0.0: nothing solved): inconclusive, a
    floor or ceiling effect the metric cannot see past;
  - interval of the difference (oriented so that the lesson predicts > 0) above 0: supported;
  - interval below 0: not supported (the opposite effect);
  - interval inside [-margin, +margin]: not supported (no effect as large as the margin);
  - otherwise inconclusive (the interval straddles 0 and reaches past the margin).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np
from scipy import stats as sps

SUPPORTED, NOT_SUPPORTED, INCONCLUSIVE = "supported", "not supported", "inconclusive"


@dataclasses.dataclass(frozen=True)
class Summary:
  """Mean, sample standard deviation (ddof=1) and a t interval of the mean over n values."""
  n: int
  mean: float
  std: float  # nan when n < 2
  lo: float  # confidence interval of the mean; nan when n < 2
  hi: float


@dataclasses.dataclass(frozen=True)
class Paired:
  """Paired comparison of a and b over the same seeds: d_i = a_i - b_i."""
  n: int
  mean_diff: float
  std_diff: float
  lo: float  # t confidence interval of the mean difference
  hi: float
  t: float  # mean / (std / sqrt(n)); +-inf when every difference is the same non-zero value
  p: float  # two-sided; nan when n < 2


def _clean(values: Sequence[float]) -> np.ndarray:
  x = np.asarray(values, np.float64)
  if x.ndim != 1:
    raise ValueError(f"expected a flat sequence of numbers, got shape {x.shape}")
  if not np.all(np.isfinite(x)):
    raise ValueError(f"non-finite value among {list(values)}")
  return x


def t_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float]:
  """mean +- t_{(1+c)/2, n-1} * s / sqrt(n); (nan, nan) for fewer than 2 values."""
  x = _clean(values)
  if x.size < 2:
    return math.nan, math.nan
  half = sps.t.ppf((1 + confidence) / 2, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size)
  return float(x.mean() - half), float(x.mean() + half)


def summarize(values: Sequence[float], confidence: float = 0.95) -> Summary:
  x = _clean(values)
  if x.size == 0:
    return Summary(0, math.nan, math.nan, math.nan, math.nan)
  lo, hi = t_interval(x, confidence)
  std = float(x.std(ddof=1)) if x.size > 1 else math.nan
  return Summary(int(x.size), float(x.mean()), std, lo, hi)


def bootstrap_interval(values: Sequence[float], confidence: float = 0.95, *,
                       num_resamples: int = 10_000, seed: int = 0) -> tuple[float, float]:
  """Percentile bootstrap interval of the mean (seeded: the same inputs give the same bounds)."""
  x = _clean(values)
  if x.size < 2:
    return math.nan, math.nan
  rng = np.random.default_rng(seed)
  means = x[rng.integers(0, x.size, size=(num_resamples, x.size))].mean(axis=1)
  alpha = (1 - confidence) / 2
  return float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha))


def paired(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> Paired:
  """Paired t-test and interval of mean(a - b); a[i] and b[i] share seed i."""
  x, y = _clean(a), _clean(b)
  if x.shape != y.shape:
    raise ValueError(f"paired comparison needs equal lengths, got {x.size} and {y.size}")
  d = x - y
  n = int(d.size)
  if n == 0:
    return Paired(0, math.nan, math.nan, math.nan, math.nan, math.nan, math.nan)
  mean = float(d.mean())
  if n < 2:
    return Paired(n, mean, math.nan, math.nan, math.nan, math.nan, math.nan)
  sd = float(d.std(ddof=1))
  if sd == 0.0:  # every seed moved by the same amount: the interval is that point
    t = 0.0 if mean == 0.0 else math.copysign(math.inf, mean)
    return Paired(n, mean, 0.0, mean, mean, t, 1.0 if mean == 0.0 else 0.0)
  t = mean / (sd / math.sqrt(n))
  p = float(2 * sps.t.sf(abs(t), n - 1))
  lo, hi = t_interval(d, confidence)
  return Paired(n, mean, sd, lo, hi, float(t), p)


@dataclasses.dataclass(frozen=True)
class Verdict:
  label: str  # SUPPORTED | NOT_SUPPORTED | INCONCLUSIVE
  reason: str  # one sentence with the numbers it rests on


def verdict(a: Sequence[float], b: Sequence[float], *, higher_is_better: bool, margin: float,
            confidence: float = 0.95, fmt: str = "{:+.3f}") -> Verdict:
  """Whether `a` beats `b` as a lesson predicts (see the module docstring for the rules)."""
  if higher_is_better:
    result = paired(a, b, confidence)
  else:
    result = paired(b, a, confidence)  # oriented: > 0 is what the lesson predicts
  f = fmt.format
  if result.n < 2:
    return Verdict(INCONCLUSIVE, f"{result.n} seed(s): no interval to judge by")
  values = set(np.concatenate([_clean(a), _clean(b)]).tolist())
  if len(values) == 1:
    return Verdict(INCONCLUSIVE, f"every run of both conditions measured {values.pop():g} (floor "
                                 "or ceiling): the metric cannot separate them at this budget")
  stated = (f"difference {f(result.mean_diff)} in the predicted direction "
            f"({round(100 * confidence)}% CI {f(result.lo)} to {f(result.hi)}, paired t-test "
            f"p={result.p:.3g}, {result.n} seeds)")
  if result.lo > 0:
    return Verdict(SUPPORTED, stated)
  if result.hi < 0:
    return Verdict(NOT_SUPPORTED, stated + ": the opposite effect")
  if -margin <= result.lo and result.hi <= margin:
    return Verdict(NOT_SUPPORTED, stated + f": no effect as large as the margin {margin:g}")
  return Verdict(INCONCLUSIVE, stated + f": the interval straddles 0 and the margin {margin:g}")
