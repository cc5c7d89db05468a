"""Every model of both tracks runs its training step and its scoring without creating tensors on the default device.

The models stay on the CPU while ``recbole_ext.testing.device_audit.strict_device`` makes ``meta`` the default
device: a tensor made inside a model without ``device=`` becomes a meta tensor and the first operation mixing it with
the model's CPU tensors raises, as it would on a GPU. The training step must also not read values back to the host.
"""
from __future__ import annotations

import pytest
import torch

from recbole_ext import registry
from recbole_ext.models.medrec import MODELS as MEDREC_MODELS
from recbole_ext.models.multimodal import MODELS as MM_MODELS
from recbole_ext.testing.device_audit import HostSyncError, strict_device
from recbole_ext.testing.medrec_synthetic import make_synthetic
from recbole_ext.testing.multimodal_toy import USER_FIELD, ITEM_FIELD, planted_clusters, random_batch, toy_config

pytestmark = pytest.mark.usefixtures("one_thread")

# MedContext wraps the RecBole context-aware class named by context_model; the audit uses one of them
MEDREC_CONFIG = {"MedContext": {"context_model": "FM"}}


@pytest.fixture(scope="module")
def mm_data():
    return planted_clusters(30, 25, 300, n_clusters=3, image_dim=48, text_dim=16, seed=0)


@pytest.fixture(scope="module")
def med_data():
    return make_synthetic(n_patients=24, n_diag=30, n_proc=8, n_med=40, effects_per_diag=1, seed=5)


def model_and_batch(name: str, mm_data, med_data):
    """The model ``name`` of either track on its tiny data (seed 0) and a training batch for it."""
    torch.manual_seed(0)
    if name in MM_MODELS:
        return registry.model_class(name)(toy_config(embedding_size=8), mm_data), random_batch(mm_data, n=16)
    return (registry.model_class(name)(dict(MEDREC_CONFIG.get(name, {})), med_data),
            med_data.batches("train", 4)[0])


def tensors_off_device(model, device: str) -> list[str]:
    """Tensors the model's modules hold (directly or in a dict attribute) that are not on ``device``."""
    off = []
    for prefix, module in model.named_modules():
        for key, value in vars(module).items():
            for sub, tensor in (value.items() if isinstance(value, dict) else [("", value)]):
                if isinstance(tensor, torch.Tensor) and tensor.device.type != device:
                    off.append(f"{prefix}.{key}{f'[{sub}]' if sub else ''}")
    return off


def audited_training_step(model, batch) -> None:
    """calculate_loss and backward under the strict device, with no host read-back."""
    with strict_device(no_host_sync=True):
        loss = model.calculate_loss(batch)
        loss = sum(loss) if isinstance(loss, tuple) else loss
        loss.backward()
    assert loss.device.type == "cpu" and torch.isfinite(loss)
    assert any(p.grad is not None for p in model.parameters())


def test_strict_device_catches_a_tensor_created_without_device():
    class Leaky(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(4))

        def forward(self, x):
            return (x * self.w + torch.zeros(4)).sum()  # torch.zeros(4) lands on the default device

    class Clean(Leaky):
        def forward(self, x):
            return (x * self.w + torch.zeros(4, device=x.device)).sum()

    x, leaky, clean = torch.ones(4), Leaky(), Clean()
    with strict_device(), pytest.raises(RuntimeError, match="device"):
        leaky(x)
    with strict_device(no_host_sync=True):
        loss = clean(x)
    with strict_device(no_host_sync=True), pytest.raises(HostSyncError):
        loss.item()
    assert loss.item() == 4.0  # restored on exit


@pytest.mark.parametrize("name", sorted(MM_MODELS))
def test_multimodal_model_is_device_clean(name, mm_data, med_data):
    model, batch = model_and_batch(name, mm_data, med_data)
    model.train()
    if hasattr(model, "pre_epoch_processing"):
        with strict_device():
            model.pre_epoch_processing()
    audited_training_step(model, batch)
    model.eval()
    users = torch.tensor([1, 5, 7])
    with torch.no_grad(), strict_device():
        scores = model.full_sort_predict({USER_FIELD: users})
        pair = model.predict({USER_FIELD: users, ITEM_FIELD: torch.tensor([2, 3, 4])})
    assert scores.device.type == "cpu" and pair.device.type == "cpu"


@pytest.mark.parametrize("name", sorted(MEDREC_MODELS))
def test_medrec_model_is_device_clean(name, mm_data, med_data):
    model, batch = model_and_batch(name, mm_data, med_data)
    model.train()
    audited_training_step(model, batch)
    model.eval()
    test_batch = med_data.batches("test", 4)[0]
    with torch.no_grad(), strict_device():
        prob = model.predict_visits(test_batch)
    assert prob.device.type == "cpu"


@pytest.mark.parametrize("name", sorted(MM_MODELS) + sorted(MEDREC_MODELS))
def test_every_tensor_a_model_holds_follows_to_device(name, mm_data, med_data):
    """quick_start builds a model, then moves it with ``.to(config['device'])``: a plain tensor attribute (not a
    parameter, buffer or graph registered with ``set_graph``) would stay behind on the CPU."""
    model, _ = model_and_batch(name, mm_data, med_data)
    assert tensors_off_device(model, "meta")  # the walk sees the parameters (in _parameters) on the CPU
    assert tensors_off_device(model.to("meta"), "meta") == []


@pytest.mark.parametrize("name", sorted(MM_MODELS) + sorted(MEDREC_MODELS))
def test_every_model_trains_under_bf16_autocast(name, mm_data, med_data):
    """``precision: bf16`` runs calculate_loss under CPU/CUDA autocast; sparse graph products stay float32
    (``layers.graph.graph_product``: no bfloat16 sparse kernels on the CPU)."""
    model, batch = model_and_batch(name, mm_data, med_data)
    model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model.calculate_loss(batch)
    loss = sum(loss) if isinstance(loss, tuple) else loss
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert torch.isfinite(loss) and grads and all(torch.isfinite(g).all() and g.dtype == torch.float32 for g in grads)
