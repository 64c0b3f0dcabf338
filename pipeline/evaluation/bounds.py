"""95% confidence bounds for the accuracy-type gates, and the three-way decision they allow.

A gate compares a figure measured on a sample of images with a limit. The point estimate
alone cannot tell a real drop from the noise of the sample: with 512 images a one-point
accuracy gate is decided by a handful of images. Each figure is reported with a two-sided
95% interval, and a gate is ``pass`` when the whole interval is on its passing side,
``fail`` when it is wholly on the failing side, and ``undecided`` otherwise:

- a proportion (accuracy, top-1 agreement): the Wilson score interval;
- a paired accuracy drop of two networks on the same images (a format against PyTorch, a
  model against its baseline, int8 against fp32): only the discordant images carry
  information, as in McNemar's test (``worse``: the first right and the second wrong,
  ``better``: the reverse). The interval is Bonett and Price's adjusted Wald interval for a
  paired difference of proportions (2012): one pseudo-image added to each discordant cell,
  so a sample with no discordant image still has a width (about ±0.54 points at 512 images).

Pure arithmetic (no numpy, no scipy): ``tests/test_bounds.py`` checks Wilson against scipy and the
paired interval's coverage by exact enumeration.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

Z95 = 1.959963984540054  # the standard normal's 97.5% quantile: a two-sided 95% interval
GATE_ON = ("bound", "point")
MAX_IMAGES = 10_000_000  # the largest sample an images-needed estimate looks at
Verdict = Literal["pass", "fail", "undecided"]


def wilson(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a proportion ``successes / n`` ((0, 1) when ``n`` is 0)."""
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True)
class Estimate:
    """A figure measured on ``n`` images: its point estimate and two-sided 95% interval."""

    point: float
    low: float
    high: float
    n: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def proportion(successes: int, n: int, scale: float = 1.0) -> Estimate:
    """A proportion with its Wilson interval (``scale`` 100: in points)."""
    low, high = wilson(successes, n)
    return Estimate(scale * successes / n if n else 0.0, scale * low, scale * high, n)


def paired_drop(worse: int, better: int, n: int, z: float = Z95) -> Estimate:
    """The accuracy drop, in points, of a second network against a first on the same ``n`` images
    (``worse`` images the first got right and the second wrong, ``better`` the reverse), with Bonett
    and Price's adjusted Wald interval."""
    if n <= 0:
        return Estimate(0.0, -100.0, 100.0, 0)
    p_worse, p_better = (worse + 1) / (n + 2), (better + 1) / (n + 2)
    diff = p_worse - p_better
    half = z * math.sqrt(max(p_worse + p_better - diff * diff, 0.0) / (n + 2))
    return Estimate(100 * (worse - better) / n, 100 * max(-1.0, diff - half), 100 * min(1.0, diff + half), n)


def drop_counts(first_right: Any, second_right: Any) -> tuple[int, int, int]:
    """``(worse, better, n)`` of two boolean sequences saying which images each network got right."""
    pairs = list(zip(first_right, second_right))
    return sum(bool(a) and not b for a, b in pairs), sum(bool(b) and not a for a, b in pairs), len(pairs)


def decide(estimate: Estimate, limit: float, at_most: bool) -> Verdict:
    """Whether the figure is within ``limit`` (``at_most``: it must not exceed it, else not fall below it)
    for every value of its interval (pass), for none (fail), or for some only (undecided)."""
    inside = (lambda v: v <= limit) if at_most else (lambda v: v >= limit)
    if inside(estimate.low) and inside(estimate.high):
        return "pass"
    if not inside(estimate.low) and not inside(estimate.high):
        return "fail"
    return "undecided"


def images_needed(estimate: Estimate, limit: float, at_most: bool, make: Any) -> int | None:
    """About how many images would decide the gate if the figure stayed where it is: ``make(n)`` is the
    estimate at ``n`` images with the same rates. None: none would (the figure is at the limit)."""
    if estimate.point == limit:
        return None
    n = max(estimate.n, 1)
    while decide(make(n), limit, at_most) == "undecided":
        n *= 2
        if n > MAX_IMAGES:
            return None
    low, high = n // 2, n  # the last undecided size, the first decided one
    while high - low > max(1, high // 100):
        mid = (low + high) // 2
        low, high = (mid, high) if decide(make(mid), limit, at_most) == "undecided" else (low, mid)
    return high


@dataclass(frozen=True)
class Judgement:
    """One gate on one figure: the estimate, the limit, the three-way verdict, whether it passes under
    ``gate_on``, and (undecided) about how many images would decide it."""

    figure: str
    estimate: Estimate
    limit: float
    at_most: bool
    verdict: Verdict
    gate_on: str
    images_needed: int | None

    @property
    def passed(self) -> bool:
        """Under ``bound``: the interval is within the limit; under ``point``: the estimate is."""
        if self.gate_on == "bound":
            return self.verdict == "pass"
        e = self.estimate
        return e.point <= self.limit if self.at_most else e.point >= self.limit

    def reason(self, unit: str = "") -> str | None:
        """Why the gate fails (None when it passes); an undecided gate says how many images would decide it."""
        e, side = self.estimate, "at most" if self.at_most else "at least"
        interval = f"{self.figure} {e.point:.4g}{unit} (95% interval {e.low:.4g} to {e.high:.4g}{unit}, {e.n} images)"
        if self.passed:
            return None
        if self.verdict == "undecided" and self.gate_on == "bound":
            needed = (f"about {self.images_needed} images would decide it (--full, or --samples {self.images_needed})"
                      if self.images_needed else "no sample size decides it: the estimate is at the limit")
            return f"{interval}: cannot be decided against the limit of {side} {self.limit:g}{unit} at this sample size; {needed}"
        return f"{interval}: the limit is {side} {self.limit:g}{unit}"

    def as_dict(self) -> dict[str, Any]:
        return {"figure": self.figure, **self.estimate.as_dict(), "limit": self.limit,
                "side": "at_most" if self.at_most else "at_least", "verdict": self.verdict, "gate_on": self.gate_on,
                "passed": self.passed, "images_needed": self.images_needed}


def judge_proportion(figure: str, successes: int, n: int, limit: float, gate_on: str, scale: float = 1.0) -> Judgement:
    """A floor on a proportion (accuracy, agreement): the estimate must be at least ``limit``. A floor at
    the top of the range (agreement 1.0: every image) is a fact of the images seen, not an estimate."""
    estimate = proportion(successes, n, scale)
    if limit >= scale:
        return Judgement(figure, estimate, limit, False, "pass" if n and successes == n else "fail", gate_on, None)
    verdict = decide(estimate, limit, at_most=False)
    needed = None if verdict != "undecided" else images_needed(
        estimate, limit, False, lambda m: proportion(round(successes * m / n), m, scale))
    return Judgement(figure, estimate, limit, False, verdict, gate_on, needed)


def judge_drop(figure: str, worse: int, better: int, n: int, limit: float, gate_on: str) -> Judgement:
    """A ceiling, in points, on a paired accuracy drop."""
    estimate = paired_drop(worse, better, n)
    verdict = decide(estimate, limit, at_most=True)
    needed = None if verdict != "undecided" else images_needed(
        estimate, limit, True, lambda m: paired_drop(round(worse * m / n), round(better * m / n), m))
    return Judgement(figure, estimate, limit, True, verdict, gate_on, needed)
