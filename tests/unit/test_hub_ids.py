"""What is a Hugging Face hub id (contract/model_ref.py): `tests/..` names a folder, not a repo."""

import pytest

from contract.model_ref import hub_id_problem


@pytest.mark.parametrize("value", ["tests/..", "tests/.", "../x", "a/..b", "a/b.", ".a/b",
                                   "a/-b", "a/b/c", "a", "a/"])
def test_not_a_hub_id(value):
    assert hub_id_problem(value) is not None


@pytest.mark.parametrize("value", ["Qwen/Qwen2-0.5B-Instruct", "mlx-community/Qwen3-14B-4bit",
                                   "meta-llama/Llama-3.1-8B-Instruct", "a/b_c.d"])
def test_hub_ids(value):
    assert hub_id_problem(value) is None
