"""VBPR against a float64 transcription of MMRec's vbpr.py ("recommended version"): loss and every gradient.

The transcription rewrites MMRec's ``forward`` (``Linear(cat(text, image))`` over the whole table, ``cat`` with the
item ID table; dropout 0 as ``calculate_loss`` calls it) and ``calculate_loss`` with ``BPRLoss`` (``-log(1e-10 +
sigmoid)``) and ``EmbLoss`` (sum of the unsquared Frobenius norms of the batch's user, positive and negative rows,
over the batch length), on the data as MMRec sees it: no PAD user or item (RecBole ids - 1), the model's parameters
without row 0. Projecting only the batch's distinct items (a documented deviation) equals projecting the whole table
and gathering. The raw features are constants on both sides, as in MMRec.
"""
import pytest
import torch

from recbole_ext.models.multimodal.vbpr import VBPR
from recbole_ext.testing.multimodal_toy import ITEM_FIELD, NEG_PREFIX, USER_FIELD, planted_clusters, random_batch, \
    toy_config
from tests.conftest import assert_same_loss_and_gradients

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny():
    return planted_clusters(30, 40, 300, n_clusters=3, image_dim=24, text_dim=16, seed=0)


def official_loss(model: VBPR, features: dict, batch: dict) -> torch.Tensor:
    """``VBPR.forward()`` + ``calculate_loss`` on the model's parameters without PAD; ``features`` without PAD."""
    raw = torch.cat([features[m] for m in ("text", "image") if m in features], -1)  # MMRec: cat(t_feat, v_feat)
    items = torch.cat([model.i_embedding[1:], model.item_linear(raw)], -1)
    users = model.u_embedding[1:]
    u, p, n = (table[batch[key] - 1] for table, key in
               ((users, USER_FIELD), (items, ITEM_FIELD), (items, NEG_PREFIX + ITEM_FIELD)))
    mf = -torch.log(1e-10 + torch.sigmoid((u * p).sum(dim=1) - (u * n).sum(dim=1))).mean()
    emb = (torch.norm(u, p=2) + torch.norm(p, p=2) + torch.norm(n, p=2)) / n.shape[0]
    return mf + model.reg_weight * emb


@pytest.mark.parametrize("modalities", [("image", "text"), ("text",), ("image",)])
def test_loss_and_gradients_equal_the_official_transcription(tiny, modalities):
    data = tiny.with_features({m: tiny.mm_features[m] for m in modalities})
    torch.manual_seed(0)
    model = VBPR(toy_config(embedding_size=8, reg_weight=0.7), data).double()
    params = dict(model.named_parameters())
    assert set(params) == {"u_embedding", "i_embedding", "item_linear.weight", "item_linear.bias"}  # features frozen
    batch = random_batch(data, n=48, seed=3)  # repeated items: the model projects each distinct one once
    assert len(torch.unique(torch.cat([batch[ITEM_FIELD], batch[NEG_PREFIX + ITEM_FIELD]]))) < 96
    model.train()
    loss = model.calculate_loss(batch)
    features = {m: data.mm_features[m][1:].double() for m in modalities}
    assert_same_loss_and_gradients(loss, official_loss(model, features, batch), params)
    # the scores the model ranks with are MMRec's full_sort_predict on the same parameters
    model.eval()
    with torch.no_grad():
        raw = torch.cat([features[m] for m in ("text", "image") if m in features], -1)
        items = torch.cat([model.i_embedding[1:], model.item_linear(raw)], -1)
        assert torch.allclose(model.item_vectors()[1:], items, rtol=1e-12, atol=1e-12)
        assert torch.allclose(model.user_vectors()[1:], model.u_embedding[1:])


def test_init_follows_mmrec(tiny):
    """``xavier_normal_initialization`` (normal weight, zero bias) of the one Linear over ``text ++ image``; the ID
    tables, plain parameters in MMRec, keep their Xavier-uniform init."""
    torch.manual_seed(0)
    model = VBPR(toy_config(embedding_size=64), tiny)
    w = model.item_linear.weight
    assert w.shape == (64, 24 + 16) and not model.item_linear.bias.any()
    fan_in, fan_out = w.shape[1], w.shape[0]
    assert abs(w.std().item() / (2.0 / (fan_in + fan_out)) ** 0.5 - 1.0) < 0.1  # xavier normal's std
    assert w.abs().max() > (6.0 / (fan_in + fan_out)) ** 0.5  # normal, not uniform: tails beyond its bound
    bound = (6.0 / (model.n_users + 128)) ** 0.5
    assert model.u_embedding.abs().max() <= bound and model.u_embedding.abs().max() > 0.9 * bound
