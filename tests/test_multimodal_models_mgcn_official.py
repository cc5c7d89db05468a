"""MGCN against a float64 transcription of MMRec's mgcn.py: graphs, loss and every gradient.

The transcription rewrites MMRec's ``get_adj_mat`` (``D^-1/2 A D^-1/2`` without epsilon, ``R`` its user-item block),
``build_sim`` + ``build_knn_normalized_graph(norm_type='sym')`` (top-k cosine similarities kept as weights, the item
itself included, each end scaled by its row sum ^-1/2), ``forward`` and ``calculate_loss`` (BPR, the L2 term over
``train_batch_size``, InfoNCE at temperature 0.2 on the batch rows, duplicates kept) on dense matrices, on the data
as MMRec sees it: no PAD user or item (RecBole ids - 1), the model's parameters without row 0. The documented
deviations are set aside that way: PAD is absent from the official side, and continuous random features give the
kNN graph no ties. The kNN graphs are compared with the official build to float32 precision (FAISS and torch
round the similarities differently in the last bits); the loss comparison then gives both sides the model's kNN
graphs, so that it holds to 1e-9 and checks everything downstream of them. MMRec's MGCN needs both modalities (its forward reads both tables), so both are given.
"""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from recbole_ext.models.multimodal.mgcn import MGCN
from recbole_ext.testing.multimodal_toy import ITEM_FIELD, NEG_PREFIX, USER_FIELD, planted_clusters, random_batch, \
    toy_config
from tests.conftest import assert_same_loss_and_gradients

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny():
    return planted_clusters(30, 40, 300, n_clusters=3, image_dim=24, text_dim=16, seed=0)


def official_adj(train: np.ndarray, n_users: int, n_items: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``get_adj_mat``: binary bipartite ``A``, ``d = row sums`` (``d^-1/2 = 0`` where ``d = 0``), ``D^-1/2 A D^-1/2``
    dense float64, and ``R`` = its user-item block."""
    n = n_users + n_items
    adj = np.zeros((n, n))
    adj[train[:, 0], n_users + train[:, 1]] = 1.0
    adj[n_users + train[:, 1], train[:, 0]] = 1.0
    with np.errstate(divide="ignore"):
        inv_sqrt = np.power(adj.sum(axis=1), -0.5)
    inv_sqrt[np.isinf(inv_sqrt)] = 0.0
    norm = torch.from_numpy(inv_sqrt[:, None] * adj * inv_sqrt[None, :])
    return norm, norm[:n_users, n_users:]


def official_knn_sym(features: torch.Tensor, knn_k: int) -> torch.Tensor:
    """``build_knn_normalized_graph(build_sim(f), k, is_sparse=True, 'sym')`` dense: edge ``(i, j)`` for the top-k
    ``j`` of row ``i``, weight ``s_ij deg_i^-1/2 deg_j^-1/2`` with ``deg`` = the sum of the kept weights of a row."""
    unit = features / features.norm(p=2, dim=-1, keepdim=True)
    values, knn = torch.topk(unit @ unit.T, knn_k, dim=-1)
    deg_inv_sqrt = values.sum(dim=1).pow(-0.5)
    deg_inv_sqrt[torch.isinf(deg_inv_sqrt)] = 0.0
    adj = torch.zeros(len(features), len(features), dtype=features.dtype)
    adj.scatter_(1, knn, deg_inv_sqrt[:, None] * values * deg_inv_sqrt[knn])
    return adj


def official_info_nce(view1: torch.Tensor, view2: torch.Tensor, temperature: float) -> torch.Tensor:
    view1, view2 = F.normalize(view1, dim=1), F.normalize(view2, dim=1)
    pos = torch.exp((view1 * view2).sum(dim=-1) / temperature)
    total = torch.exp(view1 @ view2.T / temperature).sum(dim=1)
    return torch.mean(-torch.log(pos / total))


def official_loss(model: MGCN, graphs: dict, batch: dict) -> torch.Tensor:
    """``MGCN.forward(norm_adj, train=True)`` + ``calculate_loss`` on the model's parameters without PAD."""
    n_users = model.n_users - 1
    item_w, user_w = model.item_id_embedding.weight[1:], model.user_embedding.weight[1:]
    feats = {m: model.projection[m](model.table(m)[1:]) for m in ("image", "text")}
    purified = {m: item_w * torch.sigmoid(model.purifier_gate[m](feats[m])) for m in feats}
    layers = [torch.cat([user_w, item_w])]
    while len(layers) <= model.n_ui_layers:
        layers.append(graphs["norm_adj"] @ layers[-1])
    content = torch.stack(layers, dim=1).mean(dim=1)
    views = {}
    for m, h in purified.items():
        h = torch.linalg.matrix_power(graphs[m], model.n_layers) @ h
        views[m] = torch.cat([graphs["R"] @ h, h])
    weight = torch.softmax(torch.cat([model.query_common(views["image"]), model.query_common(views["text"])], -1), -1)
    common = weight[:, 0:1] * views["image"] + weight[:, 1:2] * views["text"]
    sep = {m: torch.sigmoid(model.prefer_gate[m](content)) * (views[m] - common) for m in views}
    side = (sep["image"] + sep["text"] + common) / 3
    final = content + side
    users, pos, neg = (batch[key] - 1 for key in (USER_FIELD, ITEM_FIELD, NEG_PREFIX + ITEM_FIELD))
    u, p, n = final[:n_users][users], final[n_users:][pos], final[n_users:][neg]
    mf = -torch.mean(F.logsigmoid((u * p).sum(dim=1) - (u * n).sum(dim=1)))
    reg = (0.5 * (u ** 2).sum() + 0.5 * (p ** 2).sum() + 0.5 * (n ** 2).sum()) / model.train_batch_size
    cl = (official_info_nce(side[n_users:][pos], content[n_users:][pos], 0.2)
          + official_info_nce(side[:n_users][users], content[:n_users][users], 0.2))
    return mf + model.reg_weight * reg + model.cl_weight * cl


def official_graphs(data, knn_k: int) -> dict:
    norm_adj, r = official_adj(data.train - 1, data.n_users - 1, data.n_items - 1)
    graphs = {"norm_adj": norm_adj, "R": r}
    for m in ("image", "text"):
        graphs[m] = official_knn_sym(data.mm_features[m][1:].double(), knn_k)
    return graphs


def test_graphs_equal_the_official_construction(tiny):
    torch.manual_seed(0)
    model = MGCN(toy_config(embedding_size=8, knn_k=4), tiny)
    want = official_graphs(tiny, 4)
    nu = model.n_users
    norm_adj = model.norm_adj.to_dense()
    pad = [0, nu]
    assert not norm_adj[pad].any() and not norm_adj[:, pad].any()
    real = [i for i in range(len(norm_adj)) if i not in pad]
    assert torch.allclose(norm_adj[real][:, real].double(), want["norm_adj"], rtol=1e-6, atol=1e-9)
    r_hat = model.r_hat.to_dense()
    assert not r_hat[0].any() and not r_hat[:, 0].any()
    assert torch.allclose(r_hat[1:, 1:].double(), want["R"], rtol=1e-6, atol=1e-9)
    for m in ("image", "text"):
        graph = model.item_graphs[m].to_dense()
        assert not graph[0].any() and not graph[:, 0].any()
        assert torch.equal(graph[1:, 1:] != 0, want[m] != 0), m  # the same neighbours
        assert torch.allclose(graph[1:, 1:].double(), want[m], rtol=1e-5, atol=1e-9), m


@pytest.mark.parametrize("n_layers", [1, 2])
def test_loss_and_gradients_equal_the_official_transcription(tiny, n_layers):
    torch.manual_seed(0)
    model = MGCN(toy_config(embedding_size=8, knn_k=4, n_layers=n_layers, n_ui_layers=2, reg_weight=0.3,
                            cl_loss=0.5, train_batch_size=64), tiny).double()
    batch = random_batch(tiny, n=48, seed=3)  # repeated users and items: InfoNCE keeps duplicates
    assert len(torch.unique(batch[USER_FIELD])) < 48 and len(torch.unique(batch[ITEM_FIELD])) < 48
    params = dict(model.named_parameters())
    assert {"feature_tables.image", "feature_tables.text"} <= set(params)
    model.train()
    loss = model.calculate_loss(batch)
    graphs = {k: v.float().double() for k, v in official_graphs(tiny, 4).items()}  # the model stores float32
    for m in ("image", "text"):  # FAISS's float32 similarities differ from torch's in the last bits (see above)
        graphs[m] = model.item_graphs[m].to_dense()[1:, 1:]
    reference = official_loss(model, graphs, batch)
    assert_same_loss_and_gradients(loss, reference, params)
