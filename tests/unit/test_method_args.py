"""contract/method_args.py: each method's knobs as a typed dataclass, built from
contract/knobs.py (defaults, help and validation come from there)."""

import dataclasses

import pytest

from contract.knobs import METHODS, MLX_KTO, TORCH_KTO, Knob, Method, ParamError
from contract.method_args import (
    ARGS,
    MethodArgs,
    MLXKTOArgs,
    TorchKTOArgs,
    args_class,
    knob_fields,
)


@pytest.mark.parametrize("key", sorted(METHODS))
def test_every_method_has_args_with_its_knobs_defaults_and_help(key):
    method, cls = METHODS[key], args_class(*key)
    fields = dataclasses.fields(cls)
    assert [f.name for f in fields] == [k.name for k in method.knobs]
    assert [f.metadata["help"] for f in fields] == [k.help for k in method.knobs]
    assert cls().to_params() == method.defaults()
    assert set(ARGS) == set(METHODS)


def test_from_params_validates_and_coerces_as_the_knobs_do():
    params = {"max_steps": "20", "gradient_checkpointing": "off",
              "target_modules": "q_proj, v_proj"}
    args = TorchKTOArgs.from_params(params)
    assert args.max_steps == 20 and args.gradient_checkpointing is False
    assert args.target_modules == ["q_proj", "v_proj"]
    assert args.to_params() == TORCH_KTO.validate(params)
    assert list(args.to_params()) == [k.name for k in TORCH_KTO.knobs]  # the knobs' order


def test_no_invalid_args_exist():
    with pytest.raises(ParamError) as caught:
        MLXKTOArgs.from_params({"batch_size": 1})
    assert caught.value.field == "batch_size"
    with pytest.raises(ParamError):  # built directly: the same checks
        TorchKTOArgs(per_device_train_batch_size=1)
    with pytest.raises(ParamError, match="unknown parameter"):
        MLXKTOArgs.from_params({"rank": 4, "fine_tune_type": "dora"})  # SFT's knob only
    args = MLXKTOArgs.from_params({"beta": 0.3})
    assert args.beta == 0.3 and args.iters == MLX_KTO.defaults()["iters"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        args.beta = 1.0  # type: ignore[misc]


def test_lists_are_not_shared_between_objects():
    a, b = TorchKTOArgs(), TorchKTOArgs()
    a.target_modules.append("q_proj")
    assert b.target_modules == ["all-linear"] == TORCH_KTO.defaults()["target_modules"]


def test_a_declaration_that_disagrees_with_the_knobs_is_refused_at_import():
    method = Method("torch", "toy", [Knob("steps", int, 1, "Steps.", min=1),
                                     Knob("name", str, "", "A name.")])

    @knob_fields(method)
    class Toy(MethodArgs):
        steps: int
        name: str

    assert Toy().steps == 1 and Toy.from_params({"steps": "3"}).steps == 3
    with pytest.raises(ParamError):
        Toy(steps=0)

    with pytest.raises(TypeError, match="in order"):
        @knob_fields(method)
        class Swapped:
            name: str
            steps: int

    with pytest.raises(TypeError, match="in order"):
        @knob_fields(method)
        class WrongType:
            steps: float
            name: str
