"""LGMRec against a transcription of MMRec's lgmrec.py, its seeded randomness, PAD, planted signal and the pipeline.

The parity tests compare, in float64 on a tiny graph, this implementation's training loss and the gradient of
every parameter with an independent dense transcription of MMRec's ``LGMRec.forward`` + ``calculate_loss``
(``torch.nn.functional.gumbel_softmax`` and ``nn.Dropout`` as the official code calls them, in MMRec's id space
without PAD). The random parts are compared with the randomness fixed by drawing it the same way: the same
``torch.manual_seed`` before both, so equal results also mean the same draws in the same order (Gumbel noise for
image items, image users, text items, text users, then the four dropout masks). At evaluation the official code
draws Gumbel noise from the global generator; here it comes from a generator seeded with ``seed``, so the
evaluation vectors are compared with the transcription run right after ``torch.manual_seed(seed)``.
"""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from recbole_ext.errors import UserError
from recbole_ext.models.multimodal.lgmrec import LGMRec
from recbole_ext.quick_start import run
from recbole_ext.testing.multimodal_toy import (ITEM_FIELD, NEG_PREFIX, USER_FIELD, fit, planted_clusters, random_batch,
                                                recall_at_k, toy_config)
from tests.conftest import assert_reloaded_run_scores_with_its_vectors
from tests import test_multimodal_models as shared

pytestmark = pytest.mark.usefixtures("one_thread")
planted, lightgcn_recall = shared.planted, shared.lightgcn_recall  # the planted data and its LightGCN baseline


@pytest.fixture(scope="module")
def tiny():
    return planted_clusters(30, 40, 300, n_clusters=3, image_dim=24, text_dim=16, seed=0)


# ---- an independent transcription of MMRec's lgmrec.py (dense, MMRec ids: no PAD) -----------------------------

def official_graphs(train: np.ndarray, n_users: int, n_items: int):
    """``(R, norm_adj, num_inters)`` as MMRec's ``__init__`` / ``get_norm_adj_mat`` build them, dense float64."""
    r = torch.zeros(n_users, n_items, dtype=torch.float64)
    r[torch.from_numpy(train[:, 0] - 1), torch.from_numpy(train[:, 1] - 1)] = 1.0
    n = n_users + n_items
    a = torch.zeros(n, n, dtype=torch.float64)
    a[:n_users, n_users:] = r
    a[n_users:, :n_users] = r.T
    sum_arr = (a > 0).sum(dim=1, keepdim=True).double()
    d = (sum_arr.ravel() + 1e-7).pow(-0.5)
    return r, d[:, None] * a * d[None, :], 1.0 / (sum_arr + 1e-7)


def official_forward(model: LGMRec, graphs, training: bool):
    """MMRec's ``LGMRec.forward`` (and ``cge``, ``mge``, ``HGNNLayer``) on the model's parameters."""
    r, norm_adj, num_inters = graphs
    n_users = r.shape[0]
    user_w, item_w = model.user_embedding.weight[1:], model.item_id_embedding.weight[1:]
    v_feat, t_feat = model.raw_image[1:], model.raw_text[1:]
    tau = 0.2

    def drop(x):
        return F.dropout(x, p=1 - model.keep_rate, training=training)

    iv_hyper = v_feat @ model.hyper_projection["image"]
    uv_hyper = r @ iv_hyper
    iv_hyper = F.gumbel_softmax(iv_hyper, tau, dim=1, hard=False)
    uv_hyper = F.gumbel_softmax(uv_hyper, tau, dim=1, hard=False)
    it_hyper = t_feat @ model.hyper_projection["text"]
    ut_hyper = r @ it_hyper
    it_hyper = F.gumbel_softmax(it_hyper, tau, dim=1, hard=False)
    ut_hyper = F.gumbel_softmax(ut_hyper, tau, dim=1, hard=False)

    ego = torch.cat((user_w, item_w), dim=0)
    if model.cf_model == "mf":
        cge = ego
    else:
        layers = [ego]
        for _ in range(model.n_ui_layers):
            ego = norm_adj @ ego
            layers.append(ego)
        cge = torch.stack(layers, dim=1).mean(dim=1)

    def mge(feat, trs):
        item_feats = feat @ trs
        user_feats = (r @ item_feats) * num_inters[:n_users]
        h = torch.cat([user_feats, item_feats], dim=0)
        for _ in range(model.n_mm_layers):
            h = norm_adj @ h
        return h

    def hgnn(i_hyper, u_hyper, embeds):
        i_ret = embeds
        for _ in range(model.n_hyper_layer):
            lat = i_hyper.T @ i_ret
            i_ret = i_hyper @ lat
            u_ret = u_hyper @ lat
        return u_ret, i_ret

    lge = cge + F.normalize(mge(v_feat, model.feature_projection["image"])) \
        + F.normalize(mge(t_feat, model.feature_projection["text"]))
    uv_embs, iv_embs = hgnn(drop(iv_hyper), drop(uv_hyper), cge[n_users:])
    ut_embs, it_embs = hgnn(drop(it_hyper), drop(ut_hyper), cge[n_users:])
    ghe = torch.cat([uv_embs, iv_embs]) + torch.cat([ut_embs, it_embs])
    all_embs = lge + model.alpha * F.normalize(ghe)
    return all_embs[:n_users], all_embs[n_users:], [uv_embs, iv_embs, ut_embs, it_embs]


def official_loss(model: LGMRec, graphs, batch: dict) -> torch.Tensor:
    """MMRec's ``calculate_loss`` (``bpr_loss``, ``ssl_triple_loss``, ``reg_loss``) in MMRec ids (RecBole id - 1)."""
    users, pos, neg = (batch[k] - 1 for k in (USER_FIELD, ITEM_FIELD, NEG_PREFIX + ITEM_FIELD))
    ua, ia, (uv, iv, ut, it) = official_forward(model, graphs, training=True)
    u, p, n = ua[users], ia[pos], ia[neg]
    bpr = -torch.mean(F.logsigmoid((u * p).sum(dim=1) - (u * n).sum(dim=1)))

    def ssl(emb1, emb2, all_emb):
        e1, e2, everything = F.normalize(emb1), F.normalize(emb2), F.normalize(all_emb)
        pos_score = torch.exp((e1 * e2).sum(dim=1) / 0.2)
        ttl_score = torch.exp(e1 @ everything.T / 0.2).sum(dim=1)
        return -torch.log(pos_score / ttl_score).sum()

    hcl = ssl(uv[users], ut[users], ut) + ssl(iv[pos], it[pos], it)
    reg = (torch.norm(u, p=2) + torch.norm(p, p=2) + torch.norm(n, p=2)) / n.shape[0]
    return bpr + model.cl_weight * hcl + model.reg_weight * reg


def with_official_graphs(model: LGMRec, graphs) -> LGMRec:
    """Check the model's graphs against MMRec's (to float32 rounding: the model stores float32 graphs), then give
    it the float64 ones, PAD rows and columns inserted, so the comparisons below can be tight."""
    r, norm_adj, num_inters = graphs
    n_users = r.shape[0]
    real_users = torch.arange(1, n_users + 1)
    real_nodes = torch.cat([real_users, torch.arange(n_users + 2, model.n_users + model.n_items)])
    padded_adj = torch.zeros(model.n_users + model.n_items, model.n_users + model.n_items, dtype=torch.float64)
    padded_adj[real_nodes[:, None], real_nodes[None, :]] = norm_adj
    padded_mean = torch.zeros(model.n_users, model.n_items, dtype=torch.float64)
    padded_mean[1:, 1:] = r * num_inters[:n_users]
    for name, want in (("norm_adj", padded_adj), ("user_mean", padded_mean), ("real_inter", r)):
        got = getattr(model, name).to_dense()
        assert torch.allclose(got, want, rtol=1e-6, atol=1e-9), name
        model.set_graph(name, want.to_sparse_csr())
    return model


def double_model(dataset, **overrides) -> LGMRec:
    torch.manual_seed(0)
    cfg = toy_config(embedding_size=8, cl_weight=0.5, reg_weight=0.1, seed=11, **overrides)
    return LGMRec(cfg, dataset).double()


def official_pair(dataset, **overrides) -> tuple[LGMRec, tuple]:
    """A float64 model on MMRec's exact graphs, and those graphs."""
    graphs = official_graphs(dataset.train, dataset.n_users - 1, dataset.n_items - 1)
    return with_official_graphs(double_model(dataset, **overrides), graphs), graphs


VARIANTS = [
    {},  # the official defaults but for the loss weights (so that every term shows in the gradients)
    {"cf_model": "mf", "n_ui_layers": 3, "n_mm_layers": 1, "n_hyper_layer": 2, "hyper_num": 3, "keep_rate": 0.7,
     "alpha": 0.9},
    {"n_mm_layers": 0, "keep_rate": 1.0, "hyper_num": 6, "n_hyper_layer": 3},
]


@pytest.mark.parametrize("overrides", VARIANTS)
def test_loss_and_gradients_equal_the_official_code_with_the_same_draws(tiny, overrides):
    model, graphs = official_pair(tiny, **overrides)
    batch = random_batch(tiny, n=48, seed=3)  # duplicates on purpose
    params = dict(model.named_parameters())
    assert set(params) == {"user_embedding.weight", "item_id_embedding.weight", "feature_projection.image",
                           "feature_projection.text", "hyper_projection.image", "hyper_projection.text"}
    model.train()
    torch.manual_seed(7)
    loss = model.calculate_loss(batch)
    got = torch.autograd.grad(loss, list(params.values()))
    torch.manual_seed(7)
    reference = official_loss(model, graphs, batch)
    want = torch.autograd.grad(reference, list(params.values()))
    assert abs(loss.item() - reference.item()) < 1e-10, (loss.item(), reference.item())
    for name, g, w in zip(params, got, want):
        assert torch.allclose(g, w, rtol=1e-8, atol=1e-11), (name, (g - w).abs().max())
    # the draws were really random: another seed gives another loss
    torch.manual_seed(8)
    assert abs(model.calculate_loss(batch).item() - loss.item()) > 1e-6


def test_evaluation_vectors_equal_the_official_forward_with_noise_seeded_by_seed(tiny):
    model, graphs = official_pair(tiny)
    model.eval()
    state = torch.get_rng_state()
    users, items = model.user_vectors(), model.item_vectors()
    assert torch.equal(torch.get_rng_state(), state)  # evaluation does not move the training stream
    torch.manual_seed(11)  # the config's seed
    want_users, want_items, _ = official_forward(model, graphs, training=False)
    assert torch.allclose(users[1:], want_users, atol=1e-12) and torch.allclose(items[1:], want_items, atol=1e-12)
    model.train()
    model.eval()
    assert torch.equal(model.item_vectors(), items)  # a fixed function of the weights, evaluation after evaluation
    other = LGMRec(toy_config(embedding_size=8, seed=12), tiny).double()
    other.load_state_dict(model.state_dict())
    other.eval()
    assert not torch.allclose(other.item_vectors(), items)  # the noise is seeded by `seed`


def test_evaluation_without_noise_is_the_plain_softmax(tiny, monkeypatch):
    model, graphs = official_pair(tiny, eval_gumbel_noise=False)
    model.eval()
    calls = []

    def noiseless(logits, tau, dim, hard):
        calls.append(logits)
        return (logits / tau).softmax(dim=dim)

    monkeypatch.setattr(F, "gumbel_softmax", noiseless)
    want_users, want_items, _ = official_forward(model, graphs, training=False)
    assert len(calls) == 4
    assert torch.allclose(model.user_vectors()[1:], want_users, atol=1e-12)
    assert torch.allclose(model.item_vectors()[1:], want_items, atol=1e-12)


def test_pad_takes_no_part(tiny):
    model = double_model(tiny)
    batch = random_batch(tiny, n=32, seed=1)
    torch.manual_seed(3)
    loss = model.calculate_loss(batch)
    loss.backward()
    assert not model.user_embedding.weight.grad[0].any() and not model.item_id_embedding.weight.grad[0].any()
    model.eval()
    users, items = model.user_vectors(), model.item_vectors()
    with torch.no_grad():  # PAD's own rows, its features included, change nothing for anyone else
        model.user_embedding.weight[0] += 5.0
        model.item_id_embedding.weight[0] -= 3.0
        model.raw_image[0] += 7.0
        model.raw_text[0] -= 2.0
    model.train()
    torch.manual_seed(3)
    assert torch.equal(model.calculate_loss(batch), loss)
    model.eval()
    assert torch.equal(model.user_vectors()[1:], users[1:]) and torch.equal(model.item_vectors()[1:], items[1:])


def test_retrieval_contract_and_cache(tiny):
    torch.manual_seed(0)
    model = LGMRec(toy_config(embedding_size=8), tiny)
    model.calculate_loss(random_batch(tiny)).backward()
    model.eval()
    users = torch.tensor([1, 5, 7])
    scores = model.full_sort_predict({USER_FIELD: users}).view(3, -1)
    assert torch.allclose(scores, model.user_vectors(users) @ model.item_vectors().T)
    pairs = {USER_FIELD: users, ITEM_FIELD: torch.tensor([2, 3, 4])}
    assert torch.allclose(model.predict(pairs), scores[[0, 1, 2], [2, 3, 4]], atol=1e-6)
    assert model.item_vectors() is model.item_vectors()  # encoded once in eval mode
    assert not any(k.startswith("raw_") for k in model.state_dict())  # frozen features are not saved


def test_bad_options_are_one_line_errors(tiny):
    for bad, message in (({"cf_model": "ngcf"}, "cf_model"), ({"feat_embed_dim": 16}, "feat_embed_dim"),
                         ({"keep_rate": 0.0}, "keep_rate"), ({"n_hyper_layer": 0}, "n_hyper_layer"),
                         ({"hyper_num": 0}, "hyper_num")):
        with pytest.raises(UserError, match=message):
            LGMRec(toy_config(embedding_size=8, **bad), tiny)
    with pytest.raises(UserError, match="both image and text"):
        LGMRec(toy_config(embedding_size=8), tiny.with_features({"text": tiny.mm_features["text"]}))


def test_same_seed_same_training(tiny):
    def trained(seed):
        torch.manual_seed(0)
        model = LGMRec(toy_config(embedding_size=8), tiny)
        return fit(model, tiny, 2, learning_rate=1e-2, batch_size=64, seed=seed), recall_at_k(model, tiny, k=10)

    first = trained(0)
    assert trained(0) == first
    assert trained(1)[0] != first[0]


# ---- planted signal (the data and LightGCN baseline of tests/test_multimodal_models.py) ------------------------

def test_lgmrec_beats_lightgcn_and_shuffled_features_remove_the_gain(planted, lightgcn_recall):
    real, shuffled = shared.aligned_and_shuffled(LGMRec, planted)
    assert real > 1.2 * lightgcn_recall, (real, lightgcn_recall)
    assert shuffled < 1.05 * lightgcn_recall, (shuffled, lightgcn_recall)


# ---- the pipeline --------------------------------------------------------------------------------------------

def test_lgmrec_runs_through_the_pipeline_and_reloads(quiet, tmp_path):
    result = run("LGMRec", "synth-mm", {**quiet, "runs_root": str(tmp_path / "runs")})
    assert result.task == "mmrec"
    assert result.config["hyper_num"] == 4 and result.config["keep_rate"] == 0.5
    assert_reloaded_run_scores_with_its_vectors(result)


def test_interrupted_and_resumed_equals_an_uninterrupted_run(tmp_path, monkeypatch):
    # the Gumbel noise and dropout masks of training come from torch's generator, which last.pth saves and resume
    # restores: the resumed run draws what the uninterrupted one drew (history, test results, weights all ==)
    from tests import test_resume as resume_tests

    config = {"epochs": 3, "seed": 11, "state": "ERROR", "show_progress": False}
    full = run("LGMRec", "synth-mm", {**config, "run_dir": str(tmp_path / "full")})
    resumed = resume_tests.interrupted_then_resumed(monkeypatch, "LGMRec", "synth-mm", config, 0, tmp_path / "stopped")
    resume_tests.assert_same_run(resumed, full)
