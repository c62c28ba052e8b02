"""The torch worker reads each package's metadata once, not on every training step."""

import importlib.metadata

import pytest

pytest.importorskip("accelerate")

from accelerate.utils import imports  # noqa: E402
from accelerate.utils.imports import is_peft_available  # noqa: E402

from workers.torch.library_overhead import cache_package_checks  # noqa: E402


@pytest.fixture
def metadata_reads(monkeypatch):
    """The real importlib.metadata.metadata, counting its calls; accelerate's check restored
    after the test."""
    monkeypatch.setattr(imports, "_is_package_available", imports._is_package_available)
    reads = []
    real = importlib.metadata.metadata

    def counting(name):
        reads.append(name)
        return real(name)

    monkeypatch.setattr(importlib.metadata, "metadata", counting)
    return reads


def test_uncached_accelerate_reads_metadata_on_every_check(metadata_reads):
    if hasattr(imports._is_package_available, "cache_info"):
        pytest.skip("already cached in this process")
    for _ in range(3):
        assert is_peft_available()
    assert metadata_reads.count("peft") == 3  # what a training step paid before


def test_cached_checks_give_the_same_answers_reading_metadata_once(metadata_reads):
    cache_package_checks()
    cache_package_checks()  # idempotent: still one cache
    for _ in range(3):
        assert is_peft_available()
        assert not imports._is_package_available("no_such_package_for_prospect")
    assert metadata_reads.count("peft") == 1
    assert imports._is_package_available.cache_info().hits >= 4
