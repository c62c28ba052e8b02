"""Each method's knobs as a typed, frozen dataclass: what the worker code reads (``args.beta``,
not ``params["beta"]``), like mlx-lm's ``TrainingArgs``.

The names and types are declared here, for readers and type checkers. Defaults, help text and
validation stay in contract/knobs.py, the one source: ``knob_fields`` fills each field's
default and help from its Knob and checks, at import time, that the class lists exactly the
method's knobs in the same order with matching types. Building one validates it, so an args
object always holds a valid knob set.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, ClassVar, TypeVar, dataclass_transform

from contract.knobs import (
    HUB_DOWNLOAD,
    METHODS,
    MLX_CONVERT,
    MLX_FUSE,
    MLX_GENERATE,
    MLX_KTO,
    MLX_SFT,
    TORCH_FUSE,
    TORCH_GENERATE,
    TORCH_KTO,
    Knob,
    Method,
)

# How a Knob's type is spelled as an annotation (this module postpones annotations: strings).
_ANNOTATIONS = {int: "int", float: "float", bool: "bool", str: "str", list: "list[str]"}

T = TypeVar("T", bound=type)


class MethodArgs:
    """What every method's args class has: ``from_params`` and ``to_params``."""

    METHODS: ClassVar[tuple[Method, ...]]  # the methods whose knobs these are

    @classmethod
    def from_params(cls, params: dict[str, Any] | None):
        """Validate ``params`` (defaults filled in) and build the args; ParamError names the
        first wrong knob."""
        return cls(**cls.METHODS[0].validate(params))

    def to_params(self) -> dict[str, Any]:
        """Every knob by name, in the knobs' order: the JSON form (as config.json holds it)."""
        return dataclasses.asdict(self)

    def __post_init__(self) -> None:
        # Built directly, not through from_params: the same checks, so no invalid set exists.
        self.METHODS[0].validate(self.to_params())


def _annotation(knob: Knob) -> str:
    spelled = _ANNOTATIONS[knob.type]
    return f"{spelled} | None" if knob.nullable else spelled


def _spelled(annotation: Any) -> str:
    """An annotation as source spells it, postponed (a string) or not (a type)."""
    if isinstance(annotation, str):
        return annotation
    return annotation.__name__ if isinstance(annotation, type) else str(annotation)


def _field(knob: Knob) -> Any:
    metadata = {"help": knob.help, "knob": knob}
    if isinstance(knob.default, list):  # a fresh list per object, as dataclasses require
        default = knob.default
        return dataclasses.field(default_factory=lambda: list(default), metadata=metadata)
    return dataclasses.field(default=knob.default, metadata=metadata)


@dataclass_transform(frozen_default=True)
def knob_fields(*methods: Method) -> Callable[[T], T]:
    """Make ``cls`` a frozen dataclass of ``methods``' knobs (methods that share one knob set,
    as the two fuse methods do); TypeError at import when the declaration and the knobs
    disagree."""

    def wrap(cls: T) -> T:
        declared = {name: _spelled(annotation) for name, annotation
                    in cls.__dict__.get("__annotations__", {}).items() if name != "METHODS"}
        for method in methods:
            knobs = {k.name: _annotation(k) for k in method.knobs}
            if list(declared.items()) != list(knobs.items()):
                raise TypeError(f"{cls.__name__} must declare the knobs of {method.backend} "
                                f"{method.method} in order: {knobs}, not {declared}")
        for knob in methods[0].knobs:
            setattr(cls, knob.name, _field(knob))
        cls.METHODS = methods
        return dataclasses.dataclass(frozen=True)(cls)

    return wrap


@knob_fields(TORCH_KTO)
class TorchKTOArgs(MethodArgs):
    """torch KTO: TRL's KTOConfig names, PEFT's LoraConfig names for the adapter."""

    per_device_train_batch_size: int
    gradient_accumulation_steps: int
    learning_rate: float
    num_train_epochs: float
    max_steps: int
    max_length: int
    beta: float
    desirable_weight: float
    undesirable_weight: float
    precompute_ref_log_probs: bool
    use_liger_kernel: bool
    gradient_checkpointing: bool
    r: int
    lora_alpha: int
    lora_dropout: float
    target_modules: list[str]
    logging_steps: int
    save_steps: int
    save_total_limit: int
    warmup_ratio: float
    seed: int
    device: str
    dtype: str
    tune: str
    num_processes: int
    gpu_ids: str
    distributed: str
    init_adapter: str
    eval_fraction: float
    eval_steps: int


@knob_fields(MLX_SFT)
class MLXSFTArgs(MethodArgs):
    """MLX LoRA SFT: mlx-lm's lora config names."""

    iters: int
    batch_size: int
    grad_accumulation_steps: int
    learning_rate: float
    max_seq_length: int
    grad_checkpoint: bool
    compile: bool
    tune: str
    hosts: str
    mask_prompt: bool
    fine_tune_type: str
    num_layers: int
    rank: int
    scale: float
    dropout: float
    steps_per_report: int
    steps_per_eval: int
    val_batches: int
    steps_per_save: int
    seed: int


@knob_fields(MLX_KTO)
class MLXKTOArgs(MethodArgs):
    """MLX KTO: mlx-lm's names for the loop and the adapter, TRL's for the KTO terms."""

    iters: int
    batch_size: int
    grad_accumulation_steps: int
    learning_rate: float
    max_seq_length: int
    beta: float
    desirable_weight: float
    undesirable_weight: float
    grad_checkpoint: bool
    compile: bool
    tune: str
    hosts: str
    num_layers: int
    rank: int
    scale: float
    dropout: float
    steps_per_report: int
    steps_per_save: int
    seed: int
    init_adapter: str
    eval_fraction: float
    steps_per_eval: int


@knob_fields(TORCH_FUSE, MLX_FUSE)
class FuseArgs(MethodArgs):
    """Fusing an adapter into its base model (both backends)."""

    adapter_path: str
    name: str


@knob_fields(TORCH_GENERATE, MLX_GENERATE)
class GenerateArgs(MethodArgs):
    """An arena's generation job: two variants answer the same prompts (both backends)."""
    adapter_a: str
    model_b: str
    adapter_b: str
    max_tokens: int
    temperature: float
    top_p: float
    seed: int


@knob_fields(MLX_CONVERT)
class ConvertArgs(MethodArgs):
    """Converting (and quantizing) a model for MLX: mlx_lm.convert's names."""

    q_bits: int
    q_group_size: int
    dtype: str
    name: str


@knob_fields(HUB_DOWNLOAD)
class HubDownloadArgs(MethodArgs):
    """A hub model downloaded into the Hugging Face cache (workers/hub)."""

    revision: str
    allow_patterns: list[str]
    timeout_s: int


MLXTrainArgs = MLXSFTArgs | MLXKTOArgs  # what the MLX code both methods share reads

ARGS: dict[tuple[str, str], type[MethodArgs]] = {
    ("torch", "kto"): TorchKTOArgs,
    ("torch", "fuse"): FuseArgs,
    ("mlx", "sft"): MLXSFTArgs,
    ("mlx", "kto"): MLXKTOArgs,
    ("mlx", "fuse"): FuseArgs,
    ("torch", "generate"): GenerateArgs,
    ("mlx", "generate"): GenerateArgs,
    ("mlx", "convert"): ConvertArgs,
    ("hub", "download"): HubDownloadArgs,
}
if set(ARGS) != set(METHODS):  # a method added to contract/knobs.py needs its args class here
    raise TypeError(f"ARGS covers {sorted(ARGS)}, METHODS {sorted(METHODS)}")


def args_class(backend: str, method: str) -> type[MethodArgs]:
    """The args class of a method of contract.knobs.METHODS (KeyError for another)."""
    return ARGS[(backend, method)]


__all__ = ["ARGS", "ConvertArgs", "FuseArgs", "HubDownloadArgs", "MLXKTOArgs", "MLXSFTArgs",
           "MLXTrainArgs", "MethodArgs", "TorchKTOArgs", "args_class", "knob_fields"]
