"""Ranking and rank correlations: pure functions of the measured values.

The probe ranking orders candidates by the SFT probe (d): first by `by` (`pass@1`;
`mean_reward`: pass@1 plus the format term's weight times the share of well-formed samples; or
`format_ok`: the share of samples with a closed think block and an extractable answer within the
token budget, the one signal a student too small to solve the problems still gives, where its
pass@1 is a few lucky samples), then pass@1, pass@k at the largest k, mean reward, and last by
name (a deterministic last resort that never enters a rank or a correlation: tied candidates
share their rank).
Each cheap measure is oriented so that larger is better (`ORIENTATION`: -NLL, -style distance,
+verify rate) and compared with the probe ranking by Spearman's rho and Kendall's tau-b (ties
share ranks); +1 means the cheap measure orders the candidates exactly as the probe does. A
correlation is None when it is undefined (fewer than two candidates, or a constant measure).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from scipy import stats

CHEAP = ("nll", "style_distance", "verify_rate")
ORIENTATION = {"nll": -1.0, "style_distance": -1.0, "verify_rate": 1.0}
LABELS = {"nll": "(a) student NLL", "style_distance": "(b) style distance",
          "verify_rate": "(c) verify rate", "probe": "(d) SFT probe"}


def largest_k(candidate: Mapping[str, Any]) -> int:
  ks = [int(key.split("@")[1]) for key in candidate if key.startswith("probe_pass@")]
  return max(ks)


RANK_BY = ("pass@1", "mean_reward", "format_ok")


def probe_key(candidate: Mapping[str, Any], by: str) -> tuple:
  """Sort key, best first: the SFT probe's `by`, pass@1, pass@(largest k), mean reward; name."""
  if by not in RANK_BY:
    raise ValueError(f"probe.rank_by={by!r} must be one of {RANK_BY}")
  k = largest_k(candidate)
  return (-candidate[f"probe_{by}"], -candidate["probe_pass@1"], -candidate[f"probe_pass@{k}"],
          -candidate["probe_mean_reward"], candidate["name"])


def ranking(candidates: Sequence[Mapping[str, Any]], by: str) -> list[str]:
  """Candidate names, best first by the SFT probe (d)."""
  return [c["name"] for c in sorted(candidates, key=lambda c: probe_key(c, by))]


def probe_ranks(candidates: Sequence[Mapping[str, Any]], by: str) -> list[float]:
  """Each candidate's rank by the probe's measured values (1 = best; ties share the mean rank,
  so the name order of `ranking` never enters a correlation)."""
  keys = [probe_key(c, by)[:-1] for c in candidates]
  return [1.0 + sum(o < k for o in keys) + (sum(o == k for o in keys) - 1) / 2 for k in keys]


def ranks(values: Sequence[float], *, higher_is_better: bool = True) -> list[float]:
  """1 = best; tied values share the mean of their ranks (2 and 3 tie at 2.5)."""
  sign = -1.0 if higher_is_better else 1.0
  return stats.rankdata([sign * v for v in values], method="average").tolist()


def _defined(x: Sequence[float], y: Sequence[float]) -> bool:
  return len(x) >= 2 and len(set(x)) > 1 and len(set(y)) > 1


def spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
  """Spearman's rho (Pearson correlation of average ranks); None when undefined."""
  if not _defined(x, y):
    return None
  return float(stats.spearmanr(x, y).statistic)


def kendall(x: Sequence[float], y: Sequence[float]) -> float | None:
  """Kendall's tau-b (ties corrected); None when undefined."""
  if not _defined(x, y):
    return None
  return float(stats.kendalltau(x, y, variant="b").statistic)


def measure_ranks(candidates: Sequence[Mapping[str, Any]], by: str
                  ) -> dict[str, dict[str, float]]:
  """{measure: {name: rank}} for the cheap measures (oriented) and the probe (its ranking)."""
  names = [c["name"] for c in candidates]
  out = {m: dict(zip(names, ranks([ORIENTATION[m] * c[m] for c in candidates])))
         for m in CHEAP}
  out["probe"] = dict(zip(names, probe_ranks(candidates, by)))
  return out


def correlations(candidates: Sequence[Mapping[str, Any]], by: str
                 ) -> dict[str, dict[str, float | None]]:
  """{cheap measure: {"spearman", "kendall"}} against the probe ranking (module docstring)."""
  probe_score = [-r for r in probe_ranks(candidates, by)]  # larger = better
  out = {}
  for m in CHEAP:
    goodness = [ORIENTATION[m] * float(c[m]) for c in candidates]
    out[m] = {"spearman": spearman(goodness, probe_score),
              "kendall": kendall(goodness, probe_score)}
  return out


def recommendation(candidates: Sequence[Mapping[str, Any]],
                   corr: Mapping[str, Mapping[str, float | None]], by: str,
                   student: Mapping[str, Any] | None = None) -> str:
  """One line: which teacher to scale, and which cheap measure (if any) to screen with."""
  key = lambda c: probe_key(c, by)  # noqa: E731
  ordered = sorted(candidates, key=key)
  best, others = ordered[0], ordered[1:]
  line = f"Scale `{best['name']}`: best on the SFT probe ({by} {best[f'probe_{by}']:.3f}"
  if others:
    line += f"; next `{others[0]['name']}` {others[0][f'probe_{by}']:.3f}"
  line += ")."
  if others and key(others[0])[:-1] == key(best)[:-1]:
    line += (f" It ties with `{others[0]['name']}` on every probe measure: the probe cannot "
             "separate them (probe longer: more tokens, epochs or eval prompts).")
  if student is not None and key(best)[:-1] > key({**student, "name": ""})[:-1]:
    line += (f" No candidate beats the student itself ({by} {student[f'probe_{by}']:.3f}): "
             "probe longer or question all of them.")
  rho = {m: corr[m]["spearman"] for m in CHEAP if corr[m]["spearman"] is not None}
  agree = [m for m, r in rho.items() if r >= 0.999]
  if agree:
    line += (" " + ", ".join(LABELS[m] for m in agree) +
             " ordered the candidates as the probe did: screen new teachers with "
             f"{'it' if len(agree) == 1 else 'them'} before probing.")
  elif rho and max(rho.values()) > 0:
    m = max(rho, key=rho.get)
    line += (f" The closest cheap measure is {LABELS[m]} (Spearman {rho[m]:+.2f}); keep "
             "probing before scaling.")
  else:
    line += " No cheap measure agrees with the probe: keep probing before scaling."
  return line
