import pytest

from contract.knobs import TORCH_KTO, ParamError, method_for


def test_defaults_are_the_seed_guides_m4_recipe():
    d = TORCH_KTO.defaults()
    assert d["per_device_train_batch_size"] == 2
    assert d["gradient_accumulation_steps"] == 8
    assert d["learning_rate"] == 5e-7
    assert d["max_length"] == 512
    assert d["beta"] == 0.1
    assert d["gradient_checkpointing"] is True
    assert (d["logging_steps"], d["save_steps"]) == (10, 100)
    assert TORCH_KTO.validate({}) == d


def test_values_are_coerced_from_form_strings():
    p = TORCH_KTO.validate({"max_steps": "20", "learning_rate": "1e-4",
                            "gradient_checkpointing": "off", "target_modules": "q_proj, v_proj"})
    assert p["max_steps"] == 20 and p["learning_rate"] == 1e-4
    assert p["gradient_checkpointing"] is False
    assert p["target_modules"] == ["q_proj", "v_proj"]


@pytest.mark.parametrize("params, field, words", [
    ({"per_device_train_batch_size": 1}, "per_device_train_batch_size", "at least 2"),
    ({"batch": 4}, "batch", "unknown parameter"),
    ({"max_steps": 2.5}, "max_steps", "whole number"),
    ({"learning_rate": "fast"}, "learning_rate", "a number"),
    ({"beta": -1}, "beta", "at least 0"),
    ({"device": "tpu"}, "device", "one of auto"),
    ({"gradient_checkpointing": "maybe"}, "gradient_checkpointing", "true or false"),
    ({"max_steps": -1, "num_train_epochs": 0}, "max_steps", "num_train_epochs > 0"),
    ({"learning_rate": float("nan")}, "learning_rate", "finite"),
    ({"r": True}, "r", "a number"),
])
def test_invalid_params_name_the_field_and_the_fix(params, field, words):
    errors = TORCH_KTO.errors(params)
    assert errors and errors[0].field == field
    assert words in errors[0].message
    with pytest.raises(ParamError):
        TORCH_KTO.validate(params)


def test_unknown_backend_method():
    with pytest.raises(ParamError, match="torch/kto"):
        method_for("jax", "kto")
