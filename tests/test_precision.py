"""``precision: fp32 | bf16``: fp32 leaves training as it was, bf16 runs the loss under bfloat16 autocast in all
three trainers (RecBole's, the MMRec protocol's and the medication task's), a bad value is one line."""
from __future__ import annotations

import math

import pytest
import torch

from recbole_ext import quick_start, registry
from recbole_ext.config import build_config
from recbole_ext.errors import UserError
from recbole_ext.models.layers.row_update import linear_with_row_update
from recbole_ext.training.precision import autocast_dtype, with_precision
from tests import test_multimodal_protocol

MM_YAML = test_multimodal_protocol.MM_YAML
tiny_synth = test_multimodal_protocol.tiny_synth  # the fixture of a tiny prepared MMRec dataset, shared

pytestmark = pytest.mark.usefixtures("one_thread")


def test_precision_values():
    assert autocast_dtype({}) is None and autocast_dtype({"precision": "fp32"}) is None
    assert autocast_dtype({"precision": "BF16"}) is torch.bfloat16


def test_bad_precision_is_one_line_before_any_data(tiny):
    with pytest.raises(UserError, match=r"precision='fp16' is not one of fp32, bf16") as error:
        build_config("BPR", "tiny", {**tiny, "precision": "fp16"})
    assert "\n" not in str(error.value)


class _Recorder:
    """The part of a RecBole trainer that the precision mixin relies on: _train_epoch's loss_func."""

    def __init__(self, config, model):
        self.model, self.loss_funcs = model, []

    def _train_epoch(self, train_data, epoch_idx, loss_func=None, show_progress=False):
        self.loss_funcs.append(loss_func)
        loss_func = loss_func or self.model.calculate_loss
        return sum(float(loss_func(batch).detach()) for batch in train_data)


class _Linear(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(4, 3)
        self.dtypes = []

    def calculate_loss(self, x):
        y = self.layer(x)
        self.dtypes.append(y.dtype)
        return y.float().pow(2).mean()


def test_fp32_passes_the_step_through_and_bf16_autocasts_it():
    model = _Linear()
    fp32 = with_precision(_Recorder)({"precision": "fp32"}, model)
    fp32._train_epoch([torch.ones(2, 4)], 0)
    assert fp32.loss_funcs == [None] and model.dtypes == [torch.float32]  # RecBole's own step, untouched
    bf16 = with_precision(_Recorder)({"precision": "bf16"}, model)
    loss = bf16._train_epoch([torch.ones(2, 4)], 0)
    assert model.dtypes[-1] == torch.bfloat16 and math.isfinite(loss)
    assert model.layer.weight.dtype == torch.float32  # the parameters stay float32
    with torch.no_grad():
        assert model.layer(torch.ones(1, 4)).dtype == torch.float32  # no autocast outside the step


def test_row_updated_table_trains_under_bf16_autocast():
    """MGCN, MambaRec and FREEDOM step their feature tables inside backward (the trainer's row updates); MambaRec
    maps its image table with a weight computed in the forward pass, which autocast makes bfloat16."""
    torch.manual_seed(0)
    table, inner, outer = torch.randn(6, 5, requires_grad=True), torch.nn.Linear(5, 4), torch.nn.Linear(4, 3)
    rows = []
    with torch.autocast("cpu", dtype=torch.bfloat16):
        weight = outer.weight @ inner.weight  # bfloat16 under autocast, as MambaRec's fused projection
        out = linear_with_row_update(table, weight, outer.bias, lambda grad_rows: rows.append(grad_rows(0, 6)))
    assert out.dtype == torch.bfloat16 and weight.dtype == torch.bfloat16
    out.float().pow(2).sum().backward()
    assert rows[0].dtype == torch.float32 and rows[0].shape == (6, 5) and torch.isfinite(rows[0]).all()
    assert inner.weight.grad.dtype == torch.float32 and outer.bias.grad.dtype == torch.float32


@pytest.fixture
def autocast_seen(monkeypatch):
    """Wraps a model class's calculate_loss to record the autocast dtype on the CPU at each call (None: off)."""
    seen = []

    def watch(cls):
        original = cls.calculate_loss

        def calculate_loss(self, *args, **kwargs):
            seen.append(torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None)
            return original(self, *args, **kwargs)

        monkeypatch.setattr(cls, "calculate_loss", calculate_loss)
        return seen

    return watch


def test_general_trainer_fp32_is_unchanged_and_bf16_autocasts(tiny, autocast_seen):
    seen = autocast_seen(registry.model_class("BPR"))
    cfg = {**tiny, "epochs": 2, "seed": 3}
    plain = quick_start.run("BPR", "tiny", config_dict=cfg, saved=False)
    fp32 = quick_start.run("BPR", "tiny", config_dict={**cfg, "precision": "fp32"}, saved=False)
    assert set(seen) == {None}
    assert [h["train_loss"] for h in fp32.history] == [h["train_loss"] for h in plain.history]
    assert fp32.test_result == plain.test_result and fp32.best_valid_result == plain.best_valid_result
    seen.clear()
    bf16 = quick_start.run("BPR", "tiny", config_dict={**cfg, "precision": "bf16"}, saved=False)
    assert seen and set(seen) == {torch.bfloat16}
    # BPR's loss is lookups, products and sums: no operation autocast lowers on the CPU, so the numbers stay
    assert all(math.isfinite(h["train_loss"]) for h in bf16.history)


def test_mmrec_trainer_bf16_autocasts(tiny_synth, autocast_seen):
    seen = autocast_seen(registry.model_class("BPR"))
    result = quick_start.run("BPR", "tinymm", config_dict={**tiny_synth, "epochs": 1, "precision": "bf16"},
                             config_files=[MM_YAML], saved=False)
    assert seen and set(seen) == {torch.bfloat16} and math.isfinite(result.history[0]["train_loss"])


def test_medrec_trainer_bf16_autocasts(tmp_path, autocast_seen):
    seen = autocast_seen(registry.model_class("RETAIN"))
    result = quick_start.run("RETAIN", "synth-ehr-small", saved=False,
                             config_dict={"epochs": 1, "patients_per_batch": 32, "show_progress": False,
                                          "runs_root": str(tmp_path / "runs"), "precision": "bf16"})
    assert seen and set(seen) == {torch.bfloat16} and math.isfinite(result.history[0]["train_loss"])
