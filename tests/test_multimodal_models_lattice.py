"""LATTICE: the blockwise latent graph is MMRec's dense build (values and gradients), and the official schedule."""
import numpy as np
import pytest
import scipy.sparse as sp
import torch
import torch.nn.functional as F

from recbole_ext.errors import UserError
from recbole_ext.models.multimodal import lattice as lattice_module
from recbole_ext.models.multimodal.lattice import LATTICE, blockwise_cosine_topk
from recbole_ext.testing.multimodal_toy import (ITEM_FIELD, NEG_PREFIX, USER_FIELD, fit, planted_clusters, random_batch,
                                                recall_at_k, toy_config)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny():
    return planted_clusters(30, 40, 300, n_clusters=3, image_dim=24, text_dim=16, seed=0)


def dense_knn(x: torch.Tensor, k: int) -> torch.Tensor:
    """MMRec's build_sim + build_knn_neighbourhood: dense cosine, top-k per row, scattered into a dense matrix."""
    unit = x / x.norm(p=2, dim=-1, keepdim=True)
    sim = unit @ unit.T
    values, index = sim.topk(k, dim=-1)
    return torch.zeros_like(sim).scatter(-1, index, values)


def dense_sym(adj: torch.Tensor) -> torch.Tensor:
    """MMRec's compute_normalized_laplacian: D^-1/2 A D^-1/2 with D the row sums, inf -> 0."""
    inv_sqrt = adj.sum(-1).pow(-0.5)
    inv_sqrt[torch.isinf(inv_sqrt)] = 0.0
    return inv_sqrt[:, None] * adj * inv_sqrt[None, :]


def dense_reference_graph(model: LATTICE, raw: dict) -> torch.Tensor:
    """The latent graph S as MMRec builds it, on dense items x items matrices (rows/cols 1.. ; PAD row 0 empty)."""
    weights = torch.softmax(model.modal_weight, dim=0)
    learned = original = 0.0
    for j, m in enumerate(model.modalities):
        learned = learned + weights[j] * dense_knn(model.projection[m](model.table(m)[1:]), model.knn_k)
        original = original + weights[j] * dense_sym(dense_knn(raw[m][1:], model.knn_k))
    body = (1 - model.lambda_coeff) * dense_sym(learned) + model.lambda_coeff * original
    return F.pad(body, (1, 0, 1, 0))


def test_blockwise_topk_equals_dense_values_and_gradients():
    torch.manual_seed(0)
    x = torch.randn(37, 8, dtype=torch.float64, requires_grad=True)
    probe = torch.randn(37, 37, dtype=torch.float64)
    dense = dense_knn(x, 5)
    (grad_dense,) = torch.autograd.grad((dense * probe).sum(), x)
    index, sim = blockwise_cosine_topk(x, 5, block_elements=37 * 4)  # ten blocks of four rows
    assert index.shape == (37, 5) and (index[:, 0] == torch.arange(37)).all()  # self first
    blockwise = torch.zeros(37, 37, dtype=torch.float64).scatter(-1, index, sim)
    (grad_block,) = torch.autograd.grad((blockwise * probe).sum(), x)
    assert torch.allclose(blockwise, dense, atol=1e-12)
    assert torch.allclose(grad_block, grad_dense, atol=1e-12)


@pytest.mark.parametrize("modalities", [("image", "text"), ("text",)])
def test_latent_graph_equals_mmrec_dense_build(tiny, modalities, monkeypatch):
    monkeypatch.setattr(lattice_module, "_SIM_BLOCK_ELEMENTS", 39 * 7)  # several row blocks
    raw = {m: tiny.mm_features[m] for m in modalities}
    torch.manual_seed(0)
    model = LATTICE(toy_config(embedding_size=8, feat_embed_dim=6, knn_k=4, lambda_coeff=0.7),
                    tiny.with_features(dict(raw)))
    with torch.no_grad():
        model.modal_weight.copy_(torch.tensor([0.3, -0.4][:len(modalities)]))
    graph = model.build_item_graph().to_dense()
    reference = dense_reference_graph(model, raw)
    assert torch.allclose(graph, reference, atol=1e-6)
    assert not graph[0].any() and not graph[:, 0].any()
    probe = torch.randn_like(graph)
    params = [model.modal_weight, model.projection[modalities[0]].weight, model.feature_tables[modalities[0]]]
    got = torch.autograd.grad((graph * probe).sum(), params)
    want = torch.autograd.grad((reference * probe).sum(), params)
    for g, w in zip(got, want):
        assert torch.allclose(g, w, atol=1e-5), (g - w).abs().max()


def test_learned_graph_gets_gradient_in_first_batch_of_epoch_only(tiny):
    torch.manual_seed(0)
    model = LATTICE(toy_config(embedding_size=8), tiny)
    model.train()
    model.pre_epoch_processing()
    model.calculate_loss(random_batch(tiny)).backward()
    first = model.item_graph
    assert model.modal_weight.grad is not None and model.projection["image"].weight.grad.abs().sum() > 0
    model.zero_grad(set_to_none=True)
    model.calculate_loss(random_batch(tiny, seed=1)).backward()
    assert model.item_graph is first  # same epoch, same detached graph
    assert model.modal_weight.grad is None and model.projection["image"].weight.grad is None
    assert model.item_id_embedding.weight.grad is not None
    model.pre_epoch_processing()
    model.calculate_loss(random_batch(tiny)).backward()
    assert model.item_graph is not first

    every = LATTICE(toy_config(embedding_size=8, graph_rebuild="batch"), tiny)
    for seed in range(2):
        every.zero_grad(set_to_none=True)
        every.calculate_loss(random_batch(tiny, seed=seed)).backward()
        assert every.modal_weight.grad is not None


def test_mf_backbone_and_bad_options(tiny):
    torch.manual_seed(0)
    model = LATTICE(toy_config(embedding_size=8, cf_model="mf"), tiny)
    model.eval()
    users, items = model.user_vectors(), model.item_vectors()
    assert torch.equal(users, model.user_embedding.weight.detach())
    side = F.normalize(torch.sparse.mm(model.build_item_graph(), model.item_id_embedding.weight), dim=1)
    assert torch.allclose(items, model.item_id_embedding.weight + side, atol=1e-6)
    for bad in ({"cf_model": "ngcf"}, {"graph_rebuild": "never"}, {"lambda_coeff": 1.5}, {"knn_k": 0},
                {"reg_denominator": "mean"}):
        with pytest.raises(UserError):
            LATTICE(toy_config(embedding_size=8, **bad), tiny)


def test_lambda_one_is_the_fixed_original_graph(tiny):
    torch.manual_seed(0)
    model = LATTICE(toy_config(embedding_size=8, lambda_coeff=1.0), tiny)
    graph = model.build_item_graph().to_dense()
    original = sum(0.5 * model.original_graphs[m].to_dense() for m in model.modalities)
    assert torch.allclose(graph, original, atol=1e-7)


def test_same_seed_same_numbers(tiny):
    def trained():
        torch.manual_seed(0)
        model = LATTICE(toy_config(embedding_size=8), tiny)
        history = fit(model, tiny, 3, learning_rate=1e-2, batch_size=64, seed=0)
        return history, recall_at_k(model, tiny, "test", 10), model.modal_weight.detach().clone()

    (h1, r1, w1), (h2, r2, w2) = trained(), trained()
    assert h1 == h2 and r1 == r2 and torch.equal(w1, w2)
    assert not torch.equal(w1, torch.full_like(w1, 0.5))  # the modality weights did train


def test_backward_is_clean_under_anomaly_detection(tiny):
    # under anomaly detection (a user's debugging, or RecBole's SINE import without the compat shim) PAD's zero
    # degree must not produce a NaN even inside a gradient that is masked away afterwards
    torch.manual_seed(0)
    model = LATTICE(toy_config(embedding_size=8), tiny)
    with torch.autograd.detect_anomaly(check_nan=True):
        model.calculate_loss(random_batch(tiny)).backward()
    assert torch.isfinite(model.modal_weight.grad).all()


def mmrec_user_item_adjacency(inter_coo, n_users: int, n_items: int) -> np.ndarray:
    """MMRec's LATTICE ``get_adj_mat``, transcribed: the bipartite matrix filled block by block in a lil matrix, self
    loops added, then ``D^-1 (A + I)`` with ``D`` the row sums (inf -> 0), returned dense in float64."""
    n = n_users + n_items
    adj = sp.lil_matrix((n, n), dtype=np.float64)
    r = inter_coo.tolil()
    adj[:n_users, n_users:] = r
    adj[n_users:, :n_users] = r.T
    adj = adj.todok() + sp.eye(n)
    row_sum = np.asarray(adj.sum(1)).ravel()
    with np.errstate(divide="ignore"):
        d_inv = np.power(row_sum, -1.0)
    d_inv[np.isinf(d_inv)] = 0.0
    return np.asarray((sp.diags(d_inv) @ adj).todense())


def mmrec_lightgcn_loss(model: LATTICE, item_graph: torch.Tensor, adj: torch.Tensor, batch: dict) -> torch.Tensor:
    """MMRec LATTICE's ``forward`` (cf_model lightgcn) and ``bpr_loss``, on dense float64 matrices."""
    h = model.item_id_embedding.weight
    for _ in range(model.n_layers):
        h = item_graph @ h
    ego = torch.cat([model.user_embedding.weight, model.item_id_embedding.weight])
    layers = [ego]
    for _ in range(model.n_ui_layers):
        ego = adj @ ego
        layers.append(ego)
    mean = torch.stack(layers, dim=1).mean(dim=1)
    users, items = mean[:model.n_users], mean[model.n_users:] + F.normalize(h, p=2, dim=1)
    u, p, n = users[batch[USER_FIELD]], items[batch[ITEM_FIELD]], items[batch[NEG_PREFIX + ITEM_FIELD]]
    mf = -F.logsigmoid((u * p).sum(1) - (u * n).sum(1)).mean()
    reg = (0.5 * (u ** 2).sum() + 0.5 * (p ** 2).sum() + 0.5 * (n ** 2).sum()) / model.train_batch_size
    return mf + model.reg_weight * reg


def test_user_item_graph_is_mmrecs_row_normalised_adjacency_with_self_loops(tiny):
    torch.manual_seed(0)
    model = LATTICE(toy_config(embedding_size=8, knn_k=4, reg_weight=1e-2, train_batch_size=32), tiny).double()
    want = mmrec_user_item_adjacency(tiny.inter_matrix(), tiny.n_users, tiny.n_items)
    got = model.norm_adj.to_dense().numpy()
    np.testing.assert_allclose(got, want, atol=1e-7)

    # the backbone propagates on it as MMRec's forward does: loss and gradients of the first (graph-building) batch
    batch = random_batch(tiny, n=32, seed=3)
    model.train()
    model.pre_epoch_processing()
    loss = model.calculate_loss(batch)
    params = [model.user_embedding.weight, model.item_id_embedding.weight, model.modal_weight,
              model.projection["image"].weight]
    got_grads = torch.autograd.grad(loss, params)
    reference = mmrec_lightgcn_loss(model, dense_reference_graph(model, tiny.mm_features).double(),
                                    torch.from_numpy(want), batch)
    want_grads = torch.autograd.grad(reference, params)
    assert abs(loss.item() - reference.item()) < 1e-9
    for g, w in zip(got_grads, want_grads):
        assert torch.allclose(g, w, atol=1e-9), (g - w).abs().max()


def test_symmetric_user_item_graph_is_the_option(tiny):
    torch.manual_seed(0)
    model = LATTICE(toy_config(embedding_size=8, ui_normalisation="sym"), tiny)
    adj = model.norm_adj.to_dense()
    assert torch.allclose(adj, adj.T, atol=1e-7) and not adj.diagonal().any()
    with pytest.raises(UserError, match="ui_normalisation"):
        LATTICE(toy_config(embedding_size=8, ui_normalisation="rw"), tiny)
