"""app/units.py: one way to write sizes (binary, labelled GiB/MiB/KiB) and parameter counts."""

from __future__ import annotations

import pytest

from app.units import fmt_bytes, fmt_count


@pytest.mark.parametrize(("n", "text"), [
    (None, "—"), (0, "0 B"), (1023, "1023 B"), (1024, "1.0 KiB"), (1536, "1.5 KiB"),
    (2**20, "1.0 MiB"), (507 * 2**20, "507 MiB"), (2**30, "1.0 GiB"),
    (24.3e9, "22.6 GiB"),  # the planner's old "24.3 GB": the same bytes, now as the strip says
    (250 * 2**30, "250 GiB"), (3 * 2**40, "3.0 TiB"),
])
def test_bytes_are_binary_and_say_so(n, text):
    assert fmt_bytes(n) == text


@pytest.mark.parametrize(("n", "text"), [
    (None, "—"), (0, "0"), (350, "350"), (121_344, "121 K"), (4_700, "4.7 K"),
    (1_200_000, "1.2 M"), (350_000_000, "0.35 B"), (494_032_768, "0.49 B"),
    (500_000_000, "0.5 B"), (7_615_616_512, "7.6 B"), (70.6e9, "70.6 B"), (235e9, "235 B"),
])
def test_parameter_counts_never_read_zero(n, text):
    assert fmt_count(n) == text
