"""Device and precision choice from injected platform facts: Mac, CUDA box, bare CPU."""

from __future__ import annotations

import pytest

from workers.torch.device import DeviceError, Platform, choose_device

MAC = Platform(has_cuda=False, cuda_bf16=False, has_mps=True, system="Darwin", mps_built=True)
OLD_MAC = Platform(has_cuda=False, cuda_bf16=False, has_mps=False, system="Darwin", mps_built=True)
AMPERE = Platform(has_cuda=True, cuda_bf16=True, has_mps=False, system="Linux")
TURING = Platform(has_cuda=True, cuda_bf16=False, has_mps=False, system="Linux")
CPU_BOX = Platform(has_cuda=False, cuda_bf16=False, has_mps=False, system="Linux")


@pytest.mark.parametrize(
    ("facts", "device", "dtype"),
    [
        (AMPERE, "cuda", "bfloat16"),
        (TURING, "cuda", "float32"),
        (MAC, "mps", "float32"),
        (OLD_MAC, "cpu", "float32"),
        (CPU_BOX, "cpu", "float32"),
    ],
)
def test_auto_picks_cuda_then_mps_then_cpu(facts, device, dtype):
    choice = choose_device(facts, "auto", "auto")
    assert (choice.device, choice.dtype) == (device, dtype)


def test_training_flags_follow_the_choice():
    choice = choose_device(AMPERE)
    assert choice.bf16 and not choice.fp16 and not choice.use_cpu
    cpu = choose_device(AMPERE, "cpu")
    assert cpu.use_cpu and cpu.dtype == "float32" and not cpu.bf16
    assert choose_device(TURING, "cuda", "float16").fp16


def test_asked_precision_is_kept_where_it_exists():
    assert choose_device(MAC, "mps", "bfloat16").dtype == "bfloat16"
    assert choose_device(MAC, "mps", "float16").dtype == "float16"
    assert choose_device(CPU_BOX, "cpu", "bfloat16").dtype == "bfloat16"
    assert choose_device(AMPERE, "auto", "float32").dtype == "float32"


@pytest.mark.parametrize(
    ("facts", "device", "dtype", "fix"),
    [
        (MAC, "cuda", "auto", "mps"),
        (CPU_BOX, "cuda", "auto", "CUDA build"),
        (CPU_BOX, "mps", "auto", "only on a Mac"),
        (OLD_MAC, "mps", "auto", "macOS 12.3"),
        (
            Platform(has_cuda=False, cuda_bf16=False, has_mps=False, system="Darwin"),
            "mps",
            "auto",
            "without MPS",
        ),
        (TURING, "cuda", "bfloat16", "float16 or float32"),
        (CPU_BOX, "cpu", "float16", "float32"),
        (CPU_BOX, "tpu", "auto", "auto, cuda, mps or cpu"),
    ],
)
def test_unavailable_choices_say_what_to_pick(facts, device, dtype, fix):
    with pytest.raises(DeviceError) as info:
        choose_device(facts, device, dtype)
    assert fix in str(info.value)
    assert info.value.hint  # what the person should change, on its own for the error event


def test_detect_reads_this_machine():
    facts = Platform.detect()
    assert isinstance(facts.has_cuda, bool) and facts.system
    assert choose_device(facts).device in ("cuda", "mps", "cpu")
