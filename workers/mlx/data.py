"""KTO rows tokenized the way TRL 1.16's KTOTrainer does, for the MLX worker (the rows
themselves: contract/rows.py and contract/sft_rows.py)."""

from __future__ import annotations

from contract.token_lengths import common_prefix_length


def _ids(tokenizer, messages: list[dict], **kwargs) -> list[int]:
    ids = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=False, **kwargs)
    if isinstance(ids, dict):  # some tokenizers answer a BatchEncoding whatever is asked
        ids = ids["input_ids"]
    return list(ids)


def tokenize_kto(rows: list[dict], tokenizer, max_length: int) -> tuple[list[dict], int]:
    """Each conversational row → {prompt_ids, completion_ids, label}, as TRL does.

    The completion starts where the tokenized prompt (with the generation prompt) and the
    tokenized prompt + completion diverge. Rows whose prompt alone fills ``max_length`` are
    dropped (their count is returned); the rest are truncated to it at batching time.
    """
    out, dropped = [], 0
    for row in rows:
        prompt_ids = _ids(tokenizer, row["prompt"], add_generation_prompt=True)
        full_ids = _ids(tokenizer, row["prompt"] + row["completion"])
        n = common_prefix_length(prompt_ids, full_ids)
        if n >= max_length:
            dropped += 1
            continue
        out.append({"prompt_ids": full_ids[:n], "completion_ids": full_ids[n:],
                    "label": bool(row["label"])})
    return out, dropped
