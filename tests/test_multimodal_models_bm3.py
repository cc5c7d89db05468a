"""BM3: loss and gradients equal a float64 transcription of MMRec's bm3.py; the pipeline runs and reloads.

The reference below rewrites MMRec's ``get_norm_adj_mat``, ``forward`` and ``calculate_loss`` (with ``EmbLoss``) on
dense matrices, on the data as MMRec sees it: without RecBole's PAD user and item, ids shifted down by one, the
model's parameters without their row 0. It drops out whole tables with ``F.dropout`` in MMRec's order (users,
items, text, image) and then gathers the batch rows. Compared: the loss and the gradient of every parameter of the
model, (a) with dropout 0 (no randomness) and (b) with dropout 0.5 under the same torch seed on both sides, which
checks the random parts too: one mask per table row shared by repeated batch rows, one item target shared by the
ID and feature losses, no draw spent on PAD, MMRec's order of draws.
"""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from recbole_ext.errors import UserError
from recbole_ext.models.multimodal.bm3 import BM3
from recbole_ext.quick_start import load_run, run
from recbole_ext.testing.multimodal_toy import ITEM_FIELD, USER_FIELD, planted_clusters, random_batch, toy_config
from tests.conftest import assert_same_metrics, reevaluated_test_result

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny():
    return planted_clusters(30, 40, 300, n_clusters=3, image_dim=24, text_dim=16, seed=0)


def mmrec_norm_adj(inter: np.ndarray, n_users: int, n_items: int) -> torch.Tensor:
    """MMRec BM3's ``get_norm_adj_mat`` (no PAD): binary bipartite A, degree = nonzeros per row + 1e-7,
    D^-1/2 A D^-1/2, dense float64."""
    n = n_users + n_items
    adj = np.zeros((n, n))
    adj[inter[:, 0], n_users + inter[:, 1]] = 1.0
    adj[n_users + inter[:, 1], inter[:, 0]] = 1.0
    inv_sqrt = ((adj > 0).sum(axis=1) + 1e-7) ** -0.5
    return torch.from_numpy(inv_sqrt[:, None] * adj * inv_sqrt[None, :])


def mmrec_bm3_loss(model: BM3, dataset, batch: dict) -> torch.Tensor:
    """MMRec's ``BM3.forward`` + ``calculate_loss`` on the model's parameters without PAD (rows 1..)."""
    n_users, n_items = model.n_users - 1, model.n_items - 1
    adj = mmrec_norm_adj(dataset.train - 1, n_users, n_items).float().double()  # the model stores float32 graphs
    user_emb, item_emb = model.user_embedding.weight[1:], model.item_id_embedding.weight[1:]
    predictor = model.predictor
    feats = {m: model.table(m)[1:] for m in model.modalities}
    # forward
    ego = torch.cat([user_emb, item_emb])
    layers = [ego]
    for _ in range(model.n_layers):
        ego = adj @ ego
        layers.append(ego)
    mean = torch.stack(layers, dim=1).mean(dim=1)
    u_ori, i_ori = mean[:n_users], mean[n_users:] + item_emb
    t_on = model.projection["text"](feats["text"]) if "text" in feats else None
    v_on = model.projection["image"](feats["image"]) if "image" in feats else None
    with torch.no_grad():  # the target branch: whole tables dropped out, in MMRec's order
        u_t = F.dropout(u_ori.clone(), model.dropout)
        i_t = F.dropout(i_ori.clone(), model.dropout)
        t_t = F.dropout(t_on.clone(), model.dropout) if t_on is not None else None
        v_t = F.dropout(v_on.clone(), model.dropout) if v_on is not None else None
    users, items = batch[USER_FIELD] - 1, batch[ITEM_FIELD] - 1
    u_on, i_on = predictor(u_ori)[users], predictor(i_ori)[items]
    u_t, i_t = u_t[users], i_t[items]
    cl = 0.0
    for on, target in ((t_on, t_t), (v_on, v_t)):
        if on is None:
            continue
        on = predictor(on)[items]
        cl = cl + (1 - F.cosine_similarity(on, i_t, dim=-1).mean())
        cl = cl + (1 - F.cosine_similarity(on, target[items], dim=-1).mean())
    loss_ui = 1 - F.cosine_similarity(u_on, i_t, dim=-1).mean()
    loss_iu = 1 - F.cosine_similarity(i_on, u_t, dim=-1).mean()
    emb_loss = (torch.norm(u_ori, p=2) + torch.norm(i_ori, p=2)) / i_ori.shape[0]
    return (loss_ui + loss_iu) + model.reg_weight * emb_loss + model.cl_weight * cl


@pytest.mark.parametrize("dropout", [0.0, 0.5])
@pytest.mark.parametrize("modalities", [("image", "text"), ("text",)])
def test_loss_and_gradients_equal_mmrec_transcription(tiny, dropout, modalities):
    data = tiny.with_features({m: tiny.mm_features[m] for m in modalities})
    torch.manual_seed(0)
    model = BM3(toy_config(embedding_size=8, n_layers=2, dropout=dropout, reg_weight=0.1, cl_weight=2.0),
                data).double()
    batch = random_batch(data, n=48, seed=3)  # 48 draws over 30 users and 40 items: repeated rows
    assert len(torch.unique(batch[USER_FIELD])) < 48 and len(torch.unique(batch[ITEM_FIELD])) < 48
    adj = model.norm_adj.to_dense()
    pad = torch.tensor([0, model.n_users])
    real = torch.tensor([i for i in range(len(adj)) if i not in pad.tolist()])
    assert not adj[pad].any() and not adj[:, pad].any()  # PAD nodes are isolated
    want_adj = mmrec_norm_adj(data.train - 1, model.n_users - 1, model.n_items - 1)
    assert torch.allclose(adj[real][:, real], want_adj, atol=1e-7)  # float32 storage
    params = dict(model.named_parameters())
    assert {"feature_tables." + m for m in modalities} | {"predictor.weight", "predictor.bias"} <= set(params)
    model.train()
    torch.manual_seed(7)
    loss = model.calculate_loss(batch)
    got = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
    torch.manual_seed(7)
    reference = mmrec_bm3_loss(model, data, batch)
    want = torch.autograd.grad(reference, list(params.values()), allow_unused=True)
    assert abs(loss.item() - reference.item()) < 1e-10, (loss.item(), reference.item())
    for name, g, w in zip(params, got, want):
        assert g is not None and w is not None, name
        assert torch.allclose(g, w, rtol=1e-9, atol=1e-12), (name, (g - w).abs().max())
        assert not g[0].any() if name in ("user_embedding.weight", "item_id_embedding.weight") else True


def test_dropout_draws_change_the_loss_and_seed_fixes_it(tiny):
    torch.manual_seed(0)
    model = BM3(toy_config(embedding_size=8, dropout=0.5), tiny)
    batch = random_batch(tiny)
    losses = []
    for seed in (1, 1, 2):
        torch.manual_seed(seed)
        losses.append(model.calculate_loss(batch).item())
    assert losses[0] == losses[1] and losses[0] != losses[2]


def test_scores_are_predicted_vectors_and_options_are_checked(tiny):
    torch.manual_seed(0)
    model = BM3(toy_config(embedding_size=8), tiny)
    model.eval()
    users, items = model.encode()
    assert torch.allclose(model.item_vectors(), model.predictor(items).detach())
    assert torch.allclose(model.user_vectors(), model.predictor(users).detach())
    for bad in ({"dropout": 1.0}, {"cl_weight": -1.0}, {"n_layers": -1}, {"reg_weight": -0.1}):
        with pytest.raises(UserError):
            BM3(toy_config(embedding_size=8, **bad), tiny)


def test_runs_through_the_pipeline_without_negatives_and_reloads(quiet, tmp_path):
    result = run("BM3", "synth-mm", {**quiet, "runs_root": str(tmp_path / "runs")})
    assert result.task == "mmrec" and result.checkpoint
    assert result.protocol["negatives"] == "none (positive pairs only)"
    assert result.config["cl_weight"] == 2.0 and list(result.config["learning_rate_scheduler"]) == [1.0, 50]
    assert_same_metrics(reevaluated_test_result(result), result.test_result)
    _, model, _, train_data, _, _ = load_run(result.checkpoint)
    batch = next(iter(train_data))
    assert "neg_" + ITEM_FIELD not in batch.columns  # MMRec's use_neg_sampling: False
    model.eval()
    users = torch.arange(1, 9)
    scores = model.full_sort_predict({model.USER_ID: users}).view(len(users), -1)
    assert torch.allclose(scores, model.user_vectors(users) @ model.item_vectors().T)


def test_bm3_refuses_negatives(quiet, tmp_path):
    with pytest.raises(UserError, match="positive pairs only"):
        run("BM3", "synth-mm", {**quiet, "runs_root": str(tmp_path / "runs"),
                                "train_neg_sample_args": {"distribution": "uniform", "sample_num": 1}})


def test_pairwise_models_still_refuse_missing_negatives(quiet, tmp_path):
    with pytest.raises(UserError, match="train_neg_sample_args is None"):
        run("FREEDOM", "synth-mm", {**quiet, "runs_root": str(tmp_path / "runs"), "train_neg_sample_args": None})
