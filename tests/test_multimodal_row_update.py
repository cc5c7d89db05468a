"""Adam steps of feature tables inside backward (models/layers/row_update.py, training/row_adam.py) give the same
parameters and optimiser state as the ordinary step, and the table never holds a gradient."""
from __future__ import annotations

import pytest
import torch

from recbole_ext.models.layers.row_update import linear_with_row_update
from recbole_ext.models.multimodal.mambarec import MambaRec
from recbole_ext.models.multimodal.mgcn import MGCN
from recbole_ext.testing.multimodal_toy import ITEM_FIELD, NEG_PREFIX, USER_FIELD, planted_clusters, toy_config
from recbole_ext.training.row_adam import RowBlockAdam, attach_row_adam

ADAM_SETTINGS = [
    dict(fused=True),
    dict(fused=False, foreach=False),
    dict(fused=False, foreach=True, weight_decay=0.01),
    dict(fused=True, amsgrad=True, weight_decay=0.001),
]


def _tiny_problem(seed=0):
    g = torch.Generator().manual_seed(seed)
    table = torch.nn.Parameter(torch.randn(11, 7, generator=g))
    weight = torch.nn.Parameter(torch.randn(3, 7, generator=g))
    bias = torch.nn.Parameter(torch.randn(3, generator=g))
    targets = [torch.randn(11, 3, generator=g) for _ in range(4)]
    return table, weight, bias, targets


@pytest.mark.parametrize("settings", ADAM_SETTINGS)
def test_row_block_adam_equals_the_ordinary_step(settings):
    results = []
    for streamed in (False, True):
        table, weight, bias, targets = _tiny_problem()
        opt = torch.optim.Adam([weight, table, bias], lr=0.05, **settings)
        update = RowBlockAdam(opt, table, block_rows=4) if streamed else None  # 11 rows: blocks 4, 4, 3
        for target in targets:
            opt.zero_grad()
            out = linear_with_row_update(table, weight * 1.5, bias, update)  # weight enters through an op
            loss = ((out.tanh() - target) ** 2).sum()
            loss.backward()
            if streamed:
                assert table.grad is None  # never materialised
            opt.step()
        results.append((table.detach().clone(), weight.detach().clone(), bias.detach().clone(),
                        {k: v.clone() for k, v in opt.state[table].items()}))
    (t0, w0, b0, s0), (t1, w1, b1, s1) = results
    torch.testing.assert_close(t1, t0, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(w1, w0, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(b1, b0, rtol=1e-6, atol=1e-7)
    assert s1.keys() == s0.keys()
    for key in s0:
        assert s1[key].dtype == s0[key].dtype and s1[key].device == s0[key].device
        torch.testing.assert_close(s1[key], s0[key], rtol=1e-5, atol=1e-7)
    assert float(s1["step"]) == len(targets)


def test_state_survives_an_optimizer_state_round_trip():
    table, weight, bias, targets = _tiny_problem()
    opt = torch.optim.Adam([table, weight, bias], lr=0.05, fused=True)
    update = RowBlockAdam(opt, table, block_rows=5)
    for target in targets[:2]:
        opt.zero_grad()
        ((linear_with_row_update(table, weight, bias, update) - target) ** 2).sum().backward()
        opt.step()
    saved = opt.state_dict()
    assert float(saved["state"][0]["step"]) == 2 and saved["state"][0]["exp_avg"].abs().sum() > 0
    opt.load_state_dict(saved)  # replaces the state objects: the update must read the new ones
    before = opt.state[table]["exp_avg"].clone()
    opt.zero_grad()
    ((linear_with_row_update(table, weight, bias, update) - targets[2]) ** 2).sum().backward()
    assert float(opt.state[table]["step"]) == 3 and not torch.equal(opt.state[table]["exp_avg"], before)


def _batches(ds, n_batches=3, size=64, seed=0):
    rng = torch.Generator().manual_seed(seed)
    train = torch.from_numpy(ds.train)
    for _ in range(n_batches):
        rows = torch.randint(0, len(train), (size,), generator=rng)
        neg = torch.randint(1, ds.n_items, (size,), generator=rng)
        yield {USER_FIELD: train[rows, 0], ITEM_FIELD: train[rows, 1], NEG_PREFIX + ITEM_FIELD: neg}


# MambaRec is compared after one step: its DREAM BatchNorm makes some gradients (the biases before it) pure
# rounding noise that Adam scales up to lr-sized steps, so any last-bit difference (the row blocks' matmuls)
# grows there over later steps. MGCN has no such parameter and is compared over three steps.
@pytest.mark.parametrize("cls,extra,n_steps", [(MambaRec, {}, 1), (MambaRec, {"fuse_image_projection": False}, 1),
                                               (MGCN, {}, 3)])
def test_models_train_the_same_with_the_step_inside_backward(cls, extra, n_steps, one_thread):
    ds = planted_clusters(60, 40, 400, n_clusters=4, image_dim=32, text_dim=12, seed=3)
    finals, attached = [], []
    for streamed in (False, True):
        torch.manual_seed(0)
        model = cls(toy_config(knn_k=3, **extra), ds)
        opt = torch.optim.Adam(model.parameters(), lr=0.01, fused=True)
        attached.append(attach_row_adam(model, opt, enabled=streamed, block_rows=16))
        torch.manual_seed(1)  # dropout masks
        for batch in _batches(ds, n_batches=n_steps):
            opt.zero_grad()
            model.calculate_loss(batch).backward()
            if streamed:
                assert all(model.feature_tables[m].grad is None for m in ("image", "text"))
            opt.step()
        finals.append({k: v.detach().clone() for k, v in model.state_dict().items()})
    assert attached == [[], ["image", "text"]]
    for key, value in finals[0].items():
        torch.testing.assert_close(finals[1][key], value, rtol=1e-5, atol=1e-6, msg=key)
    assert not torch.equal(finals[1]["feature_tables.image"], ds.mm_features["image"])  # it did train


def test_not_attached_where_the_step_needs_every_gradient():
    ds = planted_clusters(30, 20, 150, n_clusters=3, image_dim=16, text_dim=8, seed=1)
    model = MambaRec(toy_config(knn_k=3), ds)
    assert attach_row_adam(model, torch.optim.Adam(model.parameters()), clip_grad_norm={"max_norm": 5}) == []
    assert attach_row_adam(model, torch.optim.AdamW(model.parameters())) == []
    assert attach_row_adam(model, torch.optim.SGD(model.parameters(), lr=0.1)) == []
    frozen = MambaRec(toy_config(knn_k=3, freeze_features=True), ds)
    assert attach_row_adam(frozen, torch.optim.Adam(frozen.parameters())) == []


def test_trainable_tables_replace_the_raw_buffers():
    ds = planted_clusters(30, 20, 150, n_clusters=3, image_dim=16, text_dim=8, seed=1)
    trained = MGCN(toy_config(knn_k=3), ds)
    assert not [name for name, _ in trained.named_buffers() if name.startswith("raw_")]
    assert torch.equal(trained.table("image").detach(), ds.mm_features["image"])
    frozen = MGCN(toy_config(knn_k=3, freeze_features=True), ds)
    assert {name for name, _ in frozen.named_buffers()} >= {"raw_image", "raw_text"}
