"""The arena's score (app/arena/results.py) against known values, and the blind shuffle
(app/arena/ingest.py) is reproducible."""

from __future__ import annotations

import pytest

from app.arena.ingest import a_on_left
from app.arena.results import labels, tally, to_variant, verdict_text, wilson


@pytest.mark.parametrize("k, n, low, high", [
    (8, 10, 0.490, 0.943),   # the textbook example
    (0, 10, 0.000, 0.278),
    (10, 10, 0.722, 1.000),
    (5, 10, 0.237, 0.763),
    (50, 100, 0.404, 0.596),
    (1, 1, 0.207, 1.000),
])
def test_wilson_known_values(k, n, low, high):
    lo, hi = wilson(k / n, n)
    assert (round(lo, 3), round(hi, 3)) == (low, high)


def test_wilson_no_trials_is_the_whole_range():
    assert wilson(0.0, 0) == (0.0, 1.0)


def test_tally_counts_ties_as_half_a_win():
    t = tally(["a"] * 6 + ["b"] * 2 + ["both_good"] * 1 + ["both_bad"] * 1 + [None] * 5)
    assert (t["wins"], t["losses"], t["ties"], t["judged"]) == (6, 2, 2, 10)
    assert (t["both_good"], t["both_bad"]) == (1, 1)
    assert t["win_rate"] == 0.7
    lo, hi = wilson(0.7, 10)
    assert t["ci_low"] == round(lo, 4) and t["ci_high"] == round(hi, 4)


def test_tally_of_nothing_has_no_rate():
    t = tally([None, None])
    assert t["judged"] == 0 and t["win_rate"] is None and t["ci_low"] is None
    assert verdict_text(t) == "No verdicts yet."


def test_verdict_text_reads_the_interval():
    assert verdict_text(tally(["a"] * 10)).startswith("A is better")
    assert verdict_text(tally(["b"] * 10)).startswith("B is better")
    assert verdict_text(tally(["a", "b"])).startswith("Not decided")


def test_left_and_right_map_to_variants_by_the_layout():
    assert to_variant("left", True) == "a" and to_variant("right", True) == "b"
    assert to_variant("left", False) == "b" and to_variant("right", False) == "a"
    assert to_variant("both_good", False) == "both_good"
    with pytest.raises(ValueError):
        to_variant("a", True)


def test_labels_winner_up_loser_down():
    assert labels("a") == (True, False) and labels("b") == (False, True)
    assert labels("both_good") == (True, True) and labels("both_bad") == (False, False)


def test_shuffle_is_reproducible_and_mixed():
    first = [a_on_left(42, i) for i in range(200)]
    assert first == [a_on_left(42, i) for i in range(200)]
    assert 60 < sum(first) < 140  # both sides, about half each
    assert first != [a_on_left(43, i) for i in range(200)]
