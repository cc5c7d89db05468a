"""Where batches go: page-locked host memory only for a CUDA run, batches moved to the run's device."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from recbole_ext.data.medrec_dataset import MedRecDataLoader, MedRecDataset
from recbole_ext.data.multimodal_loaders import MMRecTrainDataLoader
from recbole_ext.utils.device import wants_pinned_memory
from tests import test_multimodal_protocol

toy_protocol = test_multimodal_protocol.toy_protocol  # the fixture of a tiny MMRec dataset, shared

DATA = Path(__file__).resolve().parents[1] / "dataset_atomic"


@pytest.mark.parametrize("device, pinned", [("cuda", True), ("cuda:1", True), (torch.device("cuda", 0), True),
                                            ("cpu", False), (torch.device("cpu"), False), (None, False),
                                            ("meta", False)])
def test_pinned_memory_only_for_cuda(device, pinned):
    assert wants_pinned_memory(device) is pinned


@pytest.fixture
def fake_pinning(monkeypatch):
    """``Tensor.pin_memory`` without CUDA: a copy whose storage is recorded as 'pinned'."""
    pinned = set()

    def pin_memory(self, *args, **kwargs):
        copy = self.clone()
        pinned.add(copy.data_ptr())
        return copy

    monkeypatch.setattr(torch.Tensor, "pin_memory", pin_memory)
    return pinned


@pytest.mark.parametrize("device", ["cuda", "cpu"])
def test_medrec_loader_pins_visit_batches_for_cuda_only(device, fake_pinning):
    config = {"dataset": "synth-ehr-small", "data_path": str(DATA / "synth-ehr-small"), "seed": 0, "device": device}
    dataset = MedRecDataset(config)
    loader = MedRecDataLoader(config, dataset, "train", 8, shuffle=False)
    batches = list(loader) + list(loader.batch_block(0, 2))
    tensors = [t for b in batches for t in vars(b).values()]
    assert len(batches) == len(loader) + 2 and len(tensors) == 6 * len(batches)
    if device == "cuda":
        assert all(t.data_ptr() in fake_pinning for t in tensors)
    else:
        assert not fake_pinning


def test_visit_batch_moves_every_field():
    from recbole_ext.testing.medrec_synthetic import make_synthetic

    batch = make_synthetic(n_patients=9, seed=1).batches("train", 4)[0]
    moved = batch.to("meta", non_blocking=True)
    assert {k: v.device.type for k, v in vars(moved).items()} == {k: "meta" for k in vars(batch)}


@pytest.mark.parametrize("device", ["cuda", "cpu"])
def test_mmrec_training_loader_pins_batches_for_cuda_only(device, fake_pinning, toy_protocol):
    config, _, train, _, _ = toy_protocol()
    assert isinstance(train, MMRecTrainDataLoader) and not train.pin_batches  # this run's device is the CPU
    config["device"] = torch.device(device)
    loader = MMRecTrainDataLoader(config, train._dataset, train._sampler, shuffle=False)
    batches = list(loader)
    tensors = [t for b in batches for t in b.interaction.values()]
    assert batches and {"user_id", "item_id", "neg_item_id"} <= set(batches[0].interaction)
    if device == "cuda":
        assert all(t.data_ptr() in fake_pinning for t in tensors)
    else:
        assert not fake_pinning
