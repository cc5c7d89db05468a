"""LATTICE: the blockwise latent graph is MMRec's dense build (values and gradients), and the official schedule."""
import pytest
import torch
import torch.nn.functional as F

from recbole_ext.errors import UserError
from recbole_ext.models.multimodal import lattice as lattice_module
from recbole_ext.models.multimodal.lattice import LATTICE, blockwise_cosine_topk
from recbole_ext.testing.multimodal_toy import fit, planted_clusters, random_batch, recall_at_k, toy_config

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
