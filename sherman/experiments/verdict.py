"""One verdict rule for every experiment: an effect-size threshold and a spread over seeds.

A claim "A beats B" (`compare`) or "A reaches a level" (`reaches`) gets one of four verdicts:

    reproduced        the effect is at least `min_effect` AND outside the seed spread (`k` standard errors of the
                      mean difference over seeds, paired by seed when both arms have the same seeds);
    partly            the effect is outside the spread but smaller than `min_effect`, or it is at least `min_effect`
                      but there is only one seed, so no spread to judge it against;
    not reproduced    the effect is inside the seed spread, or points the other way;
    not testable here both arms failed (each is at or beyond its `fail_at` level, e.g. accuracy 0 or a phoneme error
                      rate near 1): comparing two failures says nothing about the claim, so the precondition of the
                      comparison does not hold at this scale.

So a difference inside the seed spread, or between two failures, is never "reproduced". The standard error of a
mean difference over n seeds is sd / sqrt(n) (paired) or sqrt(var_a / n_a + var_b / n_b) (unpaired), with the
sample standard deviation (ddof = 1); `k = 2` asks for roughly two standard errors. `overall` combines the rows of
an experiment. Every function returns a `Verdict` whose `reason` says which branch decided it, in numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

REPRODUCED, PARTLY, NOT_REPRODUCED, NOT_TESTABLE = "reproduced", "partly", "not reproduced", "not testable here"
VERDICTS = (REPRODUCED, PARTLY, NOT_REPRODUCED, NOT_TESTABLE)


@dataclass(frozen=True)
class Verdict:
    verdict: str
    """One of VERDICTS."""
    effect: float
    """Mean difference in the claim's direction (positive = as claimed)."""
    spread: float
    """k standard errors of that difference over seeds (nan with one seed)."""
    reason: str
    """Why, in one sentence with the numbers."""

    def __str__(self) -> str:
        return self.verdict


def _mean(x: Sequence[float]) -> float:
    return sum(x) / len(x)


def _var(x: Sequence[float]) -> float:
    if len(x) < 2:
        return float("nan")
    m = _mean(x)
    return sum((v - m) ** 2 for v in x) / (len(x) - 1)


def _failed(x: Sequence[float], fail_at: float | None, higher_is_better: bool) -> bool:
    if fail_at is None:
        return False
    m = _mean(x)
    return m <= fail_at if higher_is_better else m >= fail_at


def compare(a: Sequence[float], b: Sequence[float], min_effect: float, *, higher_is_better: bool = True, fail_at: float | None = None,
            paired: bool | None = None, k: float = 2.0, ceiling: float | None = None) -> Verdict:  # fmt: skip
    """Verdict on "arm A is better than arm B by at least min_effect" from per-seed values of one metric.

    a, b: one value per seed (same seed order when paired). fail_at: the level at or beyond which an arm counts as
    failed (<= for higher-is-better metrics, >= otherwise); both arms failed -> "not testable here". ceiling: the best
    value the metric can take (e.g. accuracy 1.0); both arms' means there -> "not testable here" (neither can be
    better). paired: default True when both have the same number of values (>= 2)."""
    a, b = [float(v) for v in a], [float(v) for v in b]
    if not a or not b:
        raise ValueError("compare needs at least one value per arm")
    if min_effect < 0:
        raise ValueError(f"min_effect must be >= 0, got {min_effect}")
    sign = 1.0 if higher_is_better else -1.0
    effect = sign * (_mean(a) - _mean(b))
    if _failed(a, fail_at, higher_is_better) and _failed(b, fail_at, higher_is_better):
        return Verdict(NOT_TESTABLE, effect, float("nan"),
                       f"both arms failed (means {_mean(a):.4g} and {_mean(b):.4g}, failure level {fail_at:g}): a comparison of two failures")  # fmt: skip
    if ceiling is not None and _failed(a, ceiling, not higher_is_better) and _failed(b, ceiling, not higher_is_better):  # at the best value
        return Verdict(NOT_TESTABLE, effect, float("nan"),
                       f"both arms at the ceiling (means {_mean(a):.4g} and {_mean(b):.4g}, best value {ceiling:g}): neither can be better")  # fmt: skip
    paired = (len(a) == len(b) and len(a) >= 2) if paired is None else paired
    if paired:
        if len(a) != len(b):
            raise ValueError("paired comparison needs the same seeds in both arms")
        d = [sign * (x - y) for x, y in zip(a, b)]
        se = math.sqrt(_var(d) / len(d)) if len(d) >= 2 else float("nan")
    else:
        se = math.sqrt(_var(a) / len(a) + _var(b) / len(b)) if min(len(a), len(b)) >= 2 else float("nan")
    spread = k * se
    n = min(len(a), len(b))
    if math.isnan(spread):
        if effect >= min_effect and effect > 0:
            return Verdict(PARTLY, effect, spread, f"effect {effect:+.4g} >= {min_effect:g} but one seed: no spread to judge it against")
        return Verdict(NOT_REPRODUCED, effect, spread, f"effect {effect:+.4g} below the threshold {min_effect:g} (one seed)")
    if effect <= spread:
        where = "points the other way" if effect <= 0 else "is inside the seed spread"
        return Verdict(NOT_REPRODUCED, effect, spread, f"effect {effect:+.4g} {where} ({k:g} s.e. = {spread:.4g}, {n} seeds)")
    if effect < min_effect:
        return Verdict(PARTLY, effect, spread, f"effect {effect:+.4g} is outside the seed spread ({spread:.4g}) but below the threshold {min_effect:g}")
    return Verdict(REPRODUCED, effect, spread, f"effect {effect:+.4g} >= {min_effect:g} and outside the seed spread ({spread:.4g}, {n} seeds)")


def reaches(values: Sequence[float], target: float, *, higher_is_better: bool = True, k: float = 2.0) -> Verdict:
    """Verdict on "the metric reaches target" (e.g. held-out accuracy >= 0.9) from per-seed values: reproduced when
    the mean is past the target by more than the spread (or, with one seed, when that seed is past it: "partly"
    since no spread is known); partly when the mean is past the target but within the spread; else not reproduced."""
    v = [float(x) for x in values]
    if not v:
        raise ValueError("reaches needs at least one value")
    sign = 1.0 if higher_is_better else -1.0
    margin = sign * (_mean(v) - target)
    spread = k * math.sqrt(_var(v) / len(v)) if len(v) >= 2 else float("nan")
    if margin < 0:
        return Verdict(NOT_REPRODUCED, margin, spread, f"mean {_mean(v):.4g} does not reach {target:g}")
    if math.isnan(spread):
        return Verdict(PARTLY, margin, spread, f"{_mean(v):.4g} reaches {target:g} with one seed (no spread)")
    if margin <= spread:
        return Verdict(PARTLY, margin, spread, f"mean {_mean(v):.4g} reaches {target:g} only within the seed spread ({spread:.4g})")
    return Verdict(REPRODUCED, margin, spread, f"mean {_mean(v):.4g} reaches {target:g} beyond the seed spread ({spread:.4g}, {len(v)} seeds)")


def overall(verdicts: Sequence[str | Verdict]) -> str:
    """An experiment's verdict from its rows: all reproduced -> reproduced; none testable -> not testable here; none
    reproduced or partly -> not reproduced; anything else -> partly."""
    vs = [str(v) for v in verdicts]
    unknown = [v for v in vs if v not in VERDICTS]
    if unknown:
        raise ValueError(f"unknown verdicts {unknown}; expected {VERDICTS}")
    if not vs:
        return NOT_TESTABLE
    if all(v == REPRODUCED for v in vs):
        return REPRODUCED
    if all(v == NOT_TESTABLE for v in vs):
        return NOT_TESTABLE
    if not any(v in (REPRODUCED, PARTLY) for v in vs):
        return NOT_REPRODUCED
    return PARTLY


def counted(rows: Sequence[dict]) -> list[str]:
    """The verdicts of an experiment's claim rows: every row but those marked `counts: False` (a precondition, or an
    ablation of ours that is not a claim of the paper), which a report shows but no verdict combines."""
    return [r["verdict"] for r in rows if r.get("counts", True)]
