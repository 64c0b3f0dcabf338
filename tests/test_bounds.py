"""The gates' confidence bounds against scipy on fixed counts, and the three-way decision."""

import pytest
from scipy.stats import binomtest, multinomial

from cnnpipe.evaluation.bounds import judge_drop, judge_proportion, paired_drop, proportion, wilson


@pytest.mark.parametrize("k, n", [(0, 10), (3, 10), (10, 10), (497, 512), (9132, 10000), (1, 1)])
def test_wilson_matches_scipy(k, n):
    ref = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    low, high = wilson(k, n)
    assert low == pytest.approx(ref.low, abs=1e-12) and high == pytest.approx(ref.high, abs=1e-12)


@pytest.mark.parametrize("n", [40, 120])
@pytest.mark.parametrize("rates", [(0.05, 0.01), (0.02, 0.02), (0.1, 0.0), (0.005, 0.0)])
def test_paired_drop_interval_covers_the_true_drop(n, rates):
    """Exact coverage over every (worse, better) outcome of n images, weighted by its trinomial probability:
    at least 93% for the nominal 95% (Bonett and Price report 94-95% on such grids)."""
    p_worse, p_better = rates
    coverage = 0.0
    for worse in range(n + 1):
        for better in range(n + 1 - worse):
            e = paired_drop(worse, better, n)
            if e.low <= 100 * (p_worse - p_better) <= e.high:
                coverage += multinomial.pmf([worse, better, n - worse - better], n, [p_worse, p_better, 1 - p_worse - p_better])
    assert coverage >= 0.93


def test_paired_drop_point_and_width():
    e = paired_drop(7, 2, 512)
    assert e.point == pytest.approx(100 * 5 / 512) and e.low < e.point < e.high
    none = paired_drop(0, 0, 512)  # no discordant image: zero, with a width
    assert none.point == 0.0 and none.low == pytest.approx(-none.high) and 0.4 < none.high < 0.7


def test_a_gate_the_sample_cannot_decide_says_how_many_images_would():
    """97% agreement on 100 images against a 0.95 floor: the interval [0.915, 0.990] straddles it."""
    j = judge_proportion("top-1 agreement", 97, 100, 0.95, "bound")
    assert j.verdict == "undecided" and not j.passed
    assert j.images_needed is not None and 100 < j.images_needed < 2000
    bigger = proportion(round(0.97 * j.images_needed), j.images_needed)
    assert bigger.low >= 0.95  # that many images, at the same rate, decide it
    assert f"--samples {j.images_needed}" in j.reason()
    point = judge_proportion("top-1 agreement", 97, 100, 0.95, "point")
    assert point.passed and point.reason() is None  # the point estimate alone passes


def test_decided_gates_and_exact_floor():
    assert judge_proportion("accuracy", 990, 1000, 0.95, "bound").verdict == "pass"
    assert judge_proportion("accuracy", 800, 1000, 0.95, "bound").verdict == "fail"
    assert judge_proportion("agreement", 512, 512, 1.0, "bound").passed  # every image: a fact, not an estimate
    assert not judge_proportion("agreement", 511, 512, 1.0, "bound").passed
    drop = judge_drop("accuracy drop", 12, 2, 1000, 1.0, "bound")  # 1.0 point, interval up to ~1.6
    assert drop.verdict == "undecided" and not drop.passed and judge_drop("d", 12, 2, 1000, 1.0, "point").passed
    assert judge_drop("accuracy drop", 3, 1, 1000, 1.0, "bound").verdict == "pass"
    assert not judge_drop("accuracy drop", 0, 0, 1000, 0.0, "bound").passed  # no sample shows a drop of exactly 0 or less
    assert judge_drop("accuracy drop", 10, 0, 1000, 1.0, "bound").verdict == "undecided"  # all discordant worse: no margin
    at_limit = judge_drop("accuracy drop", 10, 0, 1000, 1.0, "bound")
    assert at_limit.images_needed is None and "no sample size" in at_limit.reason()
