"""An arena's score: pure functions over verdicts (stored in variant terms: a, b, both_good,
both_bad), so they are tested against known values without a database.

wins = A judged better, losses = B judged better, ties = both good + both bad; A's win rate
counts a tie as half a win: (wins + ties / 2) / judged. Its 95 % interval is Wilson's score
interval on that rate with n = judged (Wilson 1927): unlike the normal approximation it stays
inside [0, 1] and is honest for the small n of a person's review session.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

Z95 = 1.959964  # the two-sided 95 % normal quantile
VERDICTS = ("a", "b", "both_good", "both_bad")
SIDES = ("left", "right", "both_good", "both_bad")


def wilson(rate: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson's score interval of a proportion ``rate`` observed over ``n`` trials; (0, 1)
    when there are none."""
    if n <= 0:
        return 0.0, 1.0
    rate = min(1.0, max(0.0, rate))
    z2 = z * z
    denom = 1 + z2 / n
    centre = (rate + z2 / (2 * n)) / denom
    margin = z * math.sqrt(rate * (1 - rate) / n + z2 / (4 * n * n)) / denom
    return max(0.0, centre - margin), min(1.0, centre + margin)


def to_variant(side: str, a_on_left: bool) -> str:
    """A verdict as the person gave it (left, right, both_good, both_bad) in variant terms."""
    if side not in SIDES:
        raise ValueError(f"verdict {side!r}: use one of {', '.join(SIDES)}")
    if side == "left":
        return "a" if a_on_left else "b"
    if side == "right":
        return "b" if a_on_left else "a"
    return side


def labels(verdict: str) -> tuple[bool, bool]:
    """(A's answer desirable, B's answer desirable) for a verdict in variant terms: the
    winner 👍 and the loser 👎; both good both 👍; both bad both 👎."""
    return {"a": (True, False), "b": (False, True), "both_good": (True, True),
            "both_bad": (False, False)}[verdict]


def tally(verdicts: Iterable[str | None]) -> dict[str, Any]:
    """Counts and A's win rate with its 95 % Wilson interval; unjudged (None) is skipped.
    win_rate, ci_low and ci_high are None before the first verdict."""
    wins = losses = good = bad = 0
    for v in verdicts:
        if v == "a":
            wins += 1
        elif v == "b":
            losses += 1
        elif v == "both_good":
            good += 1
        elif v == "both_bad":
            bad += 1
    ties = good + bad
    judged = wins + losses + ties
    if not judged:
        return {"wins": 0, "losses": 0, "ties": 0, "both_good": 0, "both_bad": 0, "judged": 0,
                "win_rate": None, "ci_low": None, "ci_high": None}
    rate = (wins + ties / 2) / judged
    low, high = wilson(rate, judged)
    return {"wins": wins, "losses": losses, "ties": ties, "both_good": good, "both_bad": bad,
            "judged": judged, "win_rate": round(rate, 4), "ci_low": round(low, 4),
            "ci_high": round(high, 4)}


def verdict_text(tally_: dict[str, Any]) -> str:
    """One line for the page: which variant the interval favours, if either."""
    if not tally_["judged"]:
        return "No verdicts yet."
    if tally_["ci_low"] > 0.5:
        return "A is better: the whole 95 % interval is above 50 %."
    if tally_["ci_high"] < 0.5:
        return "B is better: the whole 95 % interval is below 50 %."
    return "Not decided yet: the 95 % interval still includes 50 %."
