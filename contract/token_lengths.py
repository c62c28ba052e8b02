"""Token length tables: where TRL splits prompt from completion, and the summary the dataset
tool prints and the server reads back from its cache (percentiles, truncated and dropped rows)."""

from __future__ import annotations


def common_prefix_length(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def percentiles(values: list[int]) -> dict[str, float]:
    if not values:
        return {}
    ordered = sorted(values)

    def rank(p: float) -> int:  # nearest rank
        return ordered[max(0, min(len(ordered) - 1, int(round(p / 100 * len(ordered))) - 1))]

    return {"p50": rank(50), "p90": rank(90), "p95": rank(95), "p99": rank(99),
            "max": ordered[-1], "mean": round(sum(ordered) / len(ordered), 1)}


def summarize(found: dict, max_length: int) -> dict:
    """Percentiles, and the rows ``max_length`` truncates or (KTO) drops: TRL leaves out a
    row whose prompt alone fills max_length; mlx-lm cuts a long example and keeps it."""
    totals, prompts = found["total"], found["prompt"]
    dropped = sum(1 for n in prompts if n >= max_length)
    if prompts:
        truncated = sum(1 for n, t in zip(prompts, totals, strict=True)
                        if n < max_length < t)
    else:
        truncated = sum(1 for t in totals if t > max_length)
    return {"rows": len(totals), "max_length": max_length, "truncated": truncated,
            "dropped": dropped, "template": found["template"], "total": percentiles(totals),
            "prompt": percentiles(prompts)}
