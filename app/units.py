"""How Prospect writes sizes and counts, in one place (pages, the planner, API messages).

Bytes are binary and say so: 1 GiB = 2**30 bytes, as operating systems count RAM and as
``free -h`` and Activity Monitor show it. The planner, the system strip and the models page
all format through ``fmt_bytes``, so one screen never shows two numbers for one amount.
Parameter counts are decimal (K = 10**3, M = 10**6, B = 10**9), as model cards write them.
"""

from __future__ import annotations

from typing import Any

KiB, MiB, GiB, TiB = 2**10, 2**20, 2**30, 2**40


def fmt_bytes(n: float | None) -> str:
    """'512 B', '3.4 KiB', '120 MiB', '1.5 GiB', '240 GiB'; '—' for an unknown size.

    Three significant figures at most below 100 of a unit, whole numbers above."""
    if n is None:
        return "—"
    size = float(n)
    for unit, scale in (("TiB", TiB), ("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if abs(size) >= scale:
            value = size / scale
            return f"{value:.0f} {unit}" if abs(value) >= 100 else f"{value:.1f} {unit}"
    return f"{size:.0f} B"


def fmt_count(n: float | None) -> str:
    """Parameter counts: '350', '4.7 K', '1.2 M', '0.5 B'... never '0.00 B'.

    Counts from 100 M up are written in billions (a model card's '0.5B'); two significant
    figures are kept for small values so a tiny model's count still says something."""
    if n is None:
        return "—"
    value = float(n)
    if abs(value) >= 1e8:
        b = value / 1e9
        text = f"{b:.2f}".rstrip("0").rstrip(".") if abs(b) < 1 else \
            f"{b:.1f}" if abs(b) < 100 else f"{b:.0f}"
        return f"{text} B"
    for unit, scale in (("M", 1e6), ("K", 1e3)):
        if abs(value) >= scale:
            v = value / scale
            return f"{v:.1f} {unit}" if abs(v) < 100 else f"{v:.0f} {unit}"
    return f"{value:.0f}"


def number(value: Any) -> str:
    """Numbers as a person would type them: 5e-07, 0.1, 16, 1e+07 only where shorter."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "" if value is None else str(value)
    if isinstance(value, int) or value == int(value) and abs(value) < 1e15:
        return str(int(value)) if isinstance(value, int) else f"{value:.1f}"
    return f"{value:.6g}"
