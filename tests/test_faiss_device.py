"""Where the FAISS index lives: GPU only when faiss has GPU support and the run is on CUDA (or faiss_device: gpu asks),
else CPU, and back on the CPU where FAISS cannot (an index type without a GPU version). faiss-gpu is not installed
here: a stand-in module adds the GPU entry points to the real faiss-cpu, its "GPU" index being the CPU one."""
from __future__ import annotations

import logging

import faiss
import numpy as np
import pytest

from recbole_ext.errors import UserError
from recbole_ext.retrieval import index as index_module
from recbole_ext.retrieval.index import ItemIndex, choose_faiss_device

GPU_NAMES = ("StandardGpuResources", "index_cpu_to_gpu", "index_gpu_to_cpu", "GpuParameterSpace")


class FakeFaiss:
    """The real faiss module plus (``gpu=True``) faiss-gpu's entry points, recording what goes to and from the GPU."""

    def __init__(self, gpu: bool = True, n_gpus: int = 1, refuse: bool = False):
        self.gpu, self.n_gpus, self.refuse = gpu, n_gpus, refuse
        self.to_gpu, self.to_cpu, self.gpu_params = [], [], []

    def __getattr__(self, name):
        if name in GPU_NAMES and not self.gpu:
            raise AttributeError(name)
        return getattr(faiss, name)

    def get_num_gpus(self):
        return self.n_gpus if self.gpu else 0

    class StandardGpuResources:
        pass

    def index_cpu_to_gpu(self, resources, device, index):
        assert isinstance(resources, FakeFaiss.StandardGpuResources) and device == 0
        if self.refuse:
            raise RuntimeError("Error in index_cpu_to_gpu: this index type is not implemented on the GPU")
        self.to_gpu.append(index)
        return index  # the CPU index stands in for its GPU copy

    def index_gpu_to_cpu(self, index):
        self.to_cpu.append(index)
        return faiss.clone_index(index)

    def GpuParameterSpace(self):
        fake = self

        class Space:
            def set_index_parameter(self, index, name, value):
                fake.gpu_params.append((name, value))
                faiss.ParameterSpace().set_index_parameter(index, name, value)

        return Space()


@pytest.fixture
def use_faiss(monkeypatch):
    def install(fake):
        monkeypatch.setattr(index_module, "_faiss", lambda: fake)
        return fake

    return install


@pytest.mark.parametrize("setting, run_device, fake, expected", [
    ("auto", "cuda", FakeFaiss(), "gpu"),
    ("auto", "cuda:1", FakeFaiss(), "gpu"),
    ("auto", "cpu", FakeFaiss(), "cpu"),           # a CPU run keeps its index on the CPU
    ("auto", "cuda", FakeFaiss(gpu=False), "cpu"),  # faiss-cpu
    ("auto", "cuda", FakeFaiss(n_gpus=0), "cpu"),   # faiss-gpu without a visible GPU
    ("gpu", "cpu", FakeFaiss(), "gpu"),             # asked for
    ("gpu", "cuda", FakeFaiss(gpu=False), "cpu"),   # asked for, impossible: falls back
    ("cpu", "cuda", FakeFaiss(), "cpu"),
    (None, "cuda", FakeFaiss(), "gpu"),             # unset = auto
    ("GPU", "cpu", FakeFaiss(), "gpu"),
])
def test_device_choice(setting, run_device, fake, expected, use_faiss, caplog):
    use_faiss(fake)
    with caplog.at_level(logging.INFO):
        assert choose_faiss_device(setting, run_device) == expected
    assert f"FAISS index on the {expected.upper()}" in caplog.text


def test_choice_with_the_real_faiss_cpu_is_cpu_and_says_why(caplog):
    with caplog.at_level(logging.INFO):
        assert choose_faiss_device("gpu", "cuda") == "cpu"
    assert "no GPU support" in caplog.text and "WARNING" in caplog.text


def test_bad_faiss_device_is_one_line():
    with pytest.raises(UserError, match="faiss_device='tpu' is not one of auto, cpu, gpu"):
        choose_faiss_device("tpu", "cpu")


ITEMS = np.random.default_rng(0).standard_normal((300, 8)).astype(np.float32)
USERS = np.random.default_rng(1).standard_normal((5, 8)).astype(np.float32)


def test_gpu_index_searches_like_the_cpu_one_and_is_saved_from_a_cpu_copy(use_faiss, tmp_path, monkeypatch):
    fake = use_faiss(FakeFaiss())
    cpu = ItemIndex.build(ITEMS, factory="IVF4,Flat", nprobe=4, device="cpu")
    gpu = ItemIndex.build(ITEMS, factory="IVF4,Flat", nprobe=4, device="gpu")
    assert not cpu.on_gpu and gpu.on_gpu and len(fake.to_gpu) == 1
    assert fake.gpu_params == [("nprobe", 4)]  # a GPU IVF index takes nprobe through GpuParameterSpace
    for got, want in zip(gpu.search(USERS, 10), cpu.search(USERS, 10)):
        np.testing.assert_array_equal(got, want)
    assert not fake.to_cpu
    gpu.save(tmp_path / "idx")
    assert len(fake.to_cpu) == 1  # written from a CPU copy (faiss cannot write a GPU index)
    loaded, _ = ItemIndex.load(tmp_path / "idx")
    np.testing.assert_array_equal(loaded.search(USERS, 10)[1], cpu.search(USERS, 10)[1])
    # more results than a GPU index returns: the CPU copy answers
    monkeypatch.setattr(index_module, "GPU_MAX_K", 5)
    searched = []
    monkeypatch.setattr(ItemIndex, "cpu_index", lambda self: searched.append(1) or faiss.clone_index(self.index))
    gpu.search(USERS, 6)
    assert searched


def test_index_without_a_gpu_version_stays_on_the_cpu(use_faiss, caplog):
    use_faiss(FakeFaiss(refuse=True))
    with caplog.at_level(logging.WARNING):
        index = ItemIndex.build(ITEMS, factory="HNSW8", device="gpu")
    assert not index.on_gpu and "no GPU version" in caplog.text
    assert index.search(USERS, 3)[1].shape == (5, 3)
