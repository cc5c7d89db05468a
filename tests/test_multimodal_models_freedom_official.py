"""FREEDOM against a float64 transcription of MMRec's freedom.py: graphs, edge pruning, loss and every gradient.

The transcription rewrites MMRec's ``get_norm_adj_mat``, ``get_edge_info`` / ``_normalize_adj_m``,
``pre_epoch_processing``, ``get_knn_adj_mat`` / ``compute_normalized_laplacian``, ``forward`` and ``calculate_loss`` on
dense matrices, on the data as MMRec sees it: no PAD user or item (RecBole ids - 1), the model's parameters without
row 0. The documented deviations are set aside that way: PAD is absent from the official side; the kNN graph's ties
do not arise with continuous random features; projecting only the batch's feature rows equals projecting the whole
table and gathering them. The official edge list is the interaction matrix's COO order; MMRec takes it in file order,
here it is given in (user, item) order, the order of the model's CSR graph, so that the same ``torch.multinomial``
draw (same seed, same weights in the same order) picks the same edges on both sides.
"""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from recbole_ext.models.multimodal.freedom import FREEDOM
from recbole_ext.testing.multimodal_toy import ITEM_FIELD, NEG_PREFIX, USER_FIELD, planted_clusters, random_batch, \
    toy_config
from tests.conftest import assert_same_loss_and_gradients
from tests.test_multimodal_models_bm3 import mmrec_norm_adj

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny():
    return planted_clusters(30, 40, 300, n_clusters=3, image_dim=24, text_dim=16, seed=0)


def official_edges(train: np.ndarray) -> torch.Tensor:
    """The official ``edge_indices`` (MMRec ids), in (user, item) order."""
    pairs = np.unique(train - 1, axis=0)
    return torch.from_numpy(pairs.T.copy()).long()


def official_edge_values(edges: torch.Tensor, n_users: int, n_items: int, dtype) -> torch.Tensor:
    """``_normalize_adj_m``: ``(row sum + 1e-7)^-1/2 (column sum + 1e-7)^-1/2`` of the binary user-item edges."""
    r = torch.zeros(n_users, n_items, dtype=dtype)
    r[edges[0], edges[1]] = 1.0
    row_inv = (1e-7 + r.sum(dim=1)).pow(-0.5)
    col_inv = (1e-7 + r.sum(dim=0)).pow(-0.5)
    return row_inv[edges[0]] * col_inv[edges[1]]


def official_masked_adj(edges: torch.Tensor, n_users: int, n_items: int, dropout: float,
                        draw_dtype=torch.float32) -> torch.Tensor:
    """``pre_epoch_processing``: keep ``int(E (1 - dropout))`` edges drawn by ``multinomial`` on the edge values
    (held in ``draw_dtype``: the dtype of the model's buffer), renormalise them over the kept edges (MMRec's
    float32), symmetric, dense."""
    values = official_edge_values(edges, n_users, n_items, torch.float32).to(draw_dtype)
    keep = edges[:, torch.multinomial(values, int(values.size(0) * (1.0 - dropout)))]
    kept_values = official_edge_values(keep, n_users, n_items, torch.float32)
    adj = torch.zeros(n_users + n_items, n_users + n_items)
    adj[keep[0], keep[1] + n_users] = kept_values
    adj[keep[1] + n_users, keep[0]] = kept_values
    return adj


def official_knn_adj(features: torch.Tensor, knn_k: int) -> torch.Tensor:
    """``get_knn_adj_mat`` + ``compute_normalized_laplacian`` in MMRec's float32: binary cosine top-k (the item
    itself included), ``(row sum + 1e-7)^-1/2`` of both ends."""
    unit = features / features.norm(p=2, dim=-1, keepdim=True)
    _, knn = torch.topk(unit @ unit.T, knn_k, dim=-1)
    inv_sqrt = (1e-7 + torch.full((len(features),), float(knn_k))).pow(-0.5)  # every row holds k ones
    adj = torch.zeros(len(features), len(features))
    adj.scatter_(1, knn, (inv_sqrt[:, None] * inv_sqrt[knn]))
    return adj


def official_mm_adj(features: dict, knn_k: int, image_weight: float) -> torch.Tensor:
    """``mm_image_weight * image_adj + (1 - mm_image_weight) * text_adj`` (float32, as MMRec), or the one graph."""
    graphs = {m: official_knn_adj(f.float(), knn_k) for m, f in features.items()}
    if len(graphs) == 2:
        return image_weight * graphs["image"] + (1.0 - image_weight) * graphs["text"]
    return next(iter(graphs.values()))


def official_loss(model: FREEDOM, adj: torch.Tensor, mm_adj: torch.Tensor, batch: dict) -> torch.Tensor:
    """``FREEDOM.forward(adj)`` + ``calculate_loss`` on the model's parameters without PAD."""
    n_users = model.n_users - 1
    user_w, item_w = model.user_embedding.weight[1:], model.item_id_embedding.weight[1:]
    h = torch.linalg.matrix_power(mm_adj, model.n_mm_layers) @ item_w  # n_mm_layers products with mm_adj
    layers = [torch.cat([user_w, item_w])]  # the ego table, then one product with adj per layer
    while len(layers) <= model.n_ui_layers:
        layers.append(adj @ layers[-1])
    mean = torch.stack(layers, dim=1).mean(dim=1)
    ua, ia = mean[:n_users], mean[n_users:] + h

    def bpr(u, p, n):
        return -torch.mean(F.logsigmoid((u * p).sum(dim=1) - (u * n).sum(dim=1)))

    users, pos, neg = (batch[key] - 1 for key in (USER_FIELD, ITEM_FIELD, NEG_PREFIX + ITEM_FIELD))
    loss = bpr(ua[users], ia[pos], ia[neg])
    modal = 0.0
    for m in ("text", "image"):
        if m in model.modalities:
            feats = model.projection[m](model.table(m)[1:])
            modal = modal + bpr(ua[users], feats[pos], feats[neg])
    return loss + model.reg_weight * modal


def real_block(adj: torch.Tensor, n_users: int) -> torch.Tensor:
    """The rows/columns of the real nodes (user 0 and item 0 = PAD dropped), after checking PAD is isolated."""
    pad = [0, n_users]
    assert not adj[pad].any() and not adj[:, pad].any()
    real = [i for i in range(len(adj)) if i not in pad]
    return adj[real][:, real]


@pytest.mark.parametrize("modalities", [("image", "text"), ("text",)])
def test_graphs_equal_the_official_construction(tiny, modalities):
    data = tiny.with_features({m: tiny.mm_features[m] for m in modalities})
    torch.manual_seed(0)
    model = FREEDOM(toy_config(embedding_size=8, knn_k=4), data)
    n_users, n_items = model.n_users - 1, model.n_items - 1
    assert torch.allclose(real_block(model.norm_adj.to_dense(), model.n_users),
                          mmrec_norm_adj(data.train - 1, n_users, n_items).float(), atol=1e-7)
    want_mm = official_mm_adj({m: data.mm_features[m][1:] for m in modalities}, 4, model.mm_image_weight)
    got_mm = model.mm_adj.to_dense()
    assert not got_mm[0].any() and not got_mm[:, 0].any()
    assert torch.allclose(got_mm[1:, 1:], want_mm, rtol=1e-6)
    edges = official_edges(data.train)
    want_w = official_edge_values(edges, n_users, n_items, torch.float32)
    assert torch.equal(model.edge_index - 1, edges)  # same edges in the same order: same draws pick the same ones
    assert torch.allclose(model.edge_weight, want_w, rtol=1e-6)


@pytest.mark.parametrize("dropout", [0.8, 0.5])
def test_edge_pruning_equals_the_official_with_the_same_draw(tiny, dropout):
    torch.manual_seed(0)
    model = FREEDOM(toy_config(embedding_size=8, knn_k=4, dropout=dropout), tiny)  # float32, as MMRec
    n_users, n_items = model.n_users - 1, model.n_items - 1
    for seed in (3, 4):
        torch.manual_seed(seed)
        model.pre_epoch_processing()
        torch.manual_seed(seed)
        want = official_masked_adj(official_edges(tiny.train), n_users, n_items, dropout)
        got = real_block(model.masked_adj.to_dense(), model.n_users)
        assert torch.equal(got != 0, want != 0)  # the same kept edges
        assert torch.allclose(got, want, rtol=1e-6)
        assert int((want != 0).sum()) == 2 * int(len(tiny.train) * (1 - dropout))


@pytest.mark.parametrize("dropout", [0.0, 0.8])
@pytest.mark.parametrize("modalities", [("image", "text"), ("image",)])
def test_loss_and_gradients_equal_the_official_transcription(tiny, dropout, modalities):
    data = tiny.with_features({m: tiny.mm_features[m] for m in modalities})
    torch.manual_seed(0)
    model = FREEDOM(toy_config(embedding_size=8, knn_k=4, dropout=dropout, reg_weight=0.3, n_ui_layers=2,
                               n_mm_layers=2), data).double()
    batch = random_batch(data, n=48, seed=3)
    params = dict(model.named_parameters())
    assert {"feature_tables." + m for m in modalities} <= set(params)
    model.train()
    torch.manual_seed(5)
    loss = model.calculate_loss(batch)
    n_users, n_items = model.n_users - 1, model.n_items - 1
    torch.manual_seed(5)
    if dropout > 0:
        adj = official_masked_adj(official_edges(data.train), n_users, n_items, dropout, torch.float64).double()
    else:
        adj = mmrec_norm_adj(data.train - 1, n_users, n_items).float().double()  # the model stores float32 graphs
    mm_adj = official_mm_adj({m: data.mm_features[m][1:] for m in modalities}, 4, model.mm_image_weight)
    reference = official_loss(model, adj, mm_adj.double(), batch)
    assert_same_loss_and_gradients(loss, reference, params)
