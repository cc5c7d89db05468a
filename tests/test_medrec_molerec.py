"""MoleRec against an independent float64 transcription of the official code, and on synthetic data.

Parity (``test_loss_and_gradients_equal_the_official_computation``): four medications made of five tiny molecules
(one medication averages two), their BRICS fragments plus one fragment no medication has. The transcription below
follows the official ``MoleRecModel.forward`` line by line, once per (patient, visit prefix) as ``training.py``
calls it: per-visit sums of code embeddings, GRU cells written out, ``[hidden; last output]`` query, sigmoid
substructure weights, the OGB GIN (AtomEncoder/BondEncoder sums, PyG-style ``relu(x_j + e_ji)`` messages added at
the target, ``(1 + eps)`` self term, MLP with BatchNorm, BatchNorm on batch statistics, ReLU but on the last layer,
mean pooling), ``average_projection``, the SAB with heads split and concatenated along the batch axis, the
``AdjAttenAgger`` with ``masked_fill(-(1 << 32))`` and ``diag(w)``, the score MLP, and the loss of ``training.py``
(BCE + margin loss on sigmoid outputs, ``ddi_rate_score`` by pairs, the exp schedule, ``0.0005 * p^T p * A``).
The mean of its per-visit losses must equal ``MoleRec.calculate_loss`` on the padded batch, and so must the
gradients of every parameter (float64, dropout 0), for both substructure encoders and both sides of the DDI target.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from recbole_ext.data.visit_batch import VisitBatch
from recbole_ext.errors import UserError
from recbole_ext.models.medrec import molerec
from recbole_ext.models.medrec.molerec import MoleRec, atom_features, bond_features, ogb_graph
from recbole_ext.testing.medrec_synthetic import evaluate, fit, make_synthetic
from tests.medrec_official import TINY_SMILES, bce_and_margin, brics, ddi_rate_score, gru, layer_norm, linear

pytest.importorskip("rdkit")
pytestmark = pytest.mark.usefixtures("one_thread")

@pytest.fixture(scope="module")
def cohort():
    return make_synthetic(n_patients=9, n_diag=10, n_proc=5, n_med=4, n_ddi_pairs=2, seed=1)


def tiny_model(cohort, monkeypatch, **cfg):
    substructures = sorted(set().union(*(brics(s) for meds in TINY_SMILES for s in meds))) + ["C1CC1"]
    monkeypatch.setattr(molerec, "medication_smiles", lambda *a: (TINY_SMILES, substructures))
    torch.manual_seed(0)
    model = MoleRec({"embedding_size": 16, "gnn_layers": 2, "dropout_prob": 0.0, **cfg}, cohort).double()
    return model, substructures


# -- the official computation, transcribed (float64, functional, one call per visit prefix) ----------------------
def batch_norm(p, name, x):
    mean, var = x.mean(0), x.var(0, unbiased=False)
    return (x - mean) / torch.sqrt(var + 1e-5) * p[name + ".weight"] + p[name + ".bias"]


def official_gnn(p, name, graph, n_layers):
    x = sum(p[f"{name}.atom_emb.tables.{f}.weight"][graph["x"][:, f]] for f in range(9))
    src, dst = graph["edge_index"]
    n_atoms, n_edges = x.shape[0], src.shape[0]
    gather_at_target = torch.zeros(n_atoms, n_edges, dtype=torch.float64)
    gather_at_target[dst, torch.arange(n_edges)] = 1.0
    for layer in range(n_layers):
        conv = f"{name}.layers.{layer}"
        edge = sum(p[f"{conv}.bond_emb.tables.{f}.weight"][graph["edge_attr"][:, f]] for f in range(3))
        aggregated = gather_at_target @ F.relu(x[src] + edge)
        h = linear(p, conv + ".mlp.0", (1 + p[conv + ".eps"]) * x + aggregated)
        h = linear(p, conv + ".mlp.3", F.relu(batch_norm(p, conv + ".mlp.1", h)))
        h = batch_norm(p, f"{name}.norms.{layer}", h)
        x = h if layer == n_layers - 1 else F.relu(h)
    pool = torch.zeros(graph["n_graphs"], n_atoms, dtype=torch.float64)
    pool[graph["graph"], torch.arange(n_atoms)] = 1.0
    return (pool / pool.sum(1, keepdim=True)) @ x


def official_sab(p, X, heads):
    Q, K, V = linear(p, "sab.q", X), linear(p, "sab.k", X), linear(p, "sab.v", X)
    split = Q.shape[2] // heads
    Qs, Ks, Vs = (torch.cat(t.split(split, 2), 0) for t in (Q, K, V))
    attn = torch.softmax(Qs @ Ks.transpose(1, 2) / math.sqrt(split), dim=-1)
    O = torch.cat((Qs + attn @ Vs).split(Q.shape[0], 0), 2)
    return layer_norm(p, "sab.norm2", linear(p, "sab.out", layer_norm(p, "sab.norm1", O)))


def official_forward(p, visits, drug, heads, embedding):
    seq1 = torch.stack([p["history.diag_emb.weight"][torch.as_tensor(adm[0])].sum(0) for adm in visits])
    seq2 = torch.stack([p["history.proc_emb.weight"][torch.as_tensor(adm[1])].sum(0) for adm in visits])
    out1, hidden1 = gru(p, "history.diag_gru", seq1)
    out2, hidden2 = gru(p, "history.proc_gru", seq2)
    patient_repr = torch.cat([hidden1, hidden2, out1[-1], out2[-1]])
    query = linear(p, "query.1", F.relu(patient_repr))
    substruct_weight = torch.sigmoid(linear(p, "substructure_relation", query))
    global_embeddings = drug["average_projection"] @ official_gnn(p, "molecule_gin", drug["mol"], drug["layers"])
    substruct = p["substructure_table"] if embedding else official_gnn(p, "substructure_gin", drug["sub"],
                                                                       drug["layers"])
    substruct = official_sab(p, substruct.unsqueeze(0), heads).squeeze(0)
    Q, K = linear(p, "attn_query", global_embeddings), linear(p, "attn_key", substruct)
    attn = Q @ K.T / math.sqrt(Q.shape[1])
    attn = torch.softmax(torch.masked_fill(attn, drug["ddi_mask_H"] == 0, -(1 << 32)), dim=-1)
    molecule = attn @ (torch.diag(substruct_weight) @ substruct)
    score = linear(p, "score.2", F.relu(linear(p, "score.0", molecule))).t()
    prob = torch.sigmoid(score)
    return score, 0.0005 * (prob.t() @ prob).mul(drug["ddi_adj"]).sum()


def official_visit_loss(result, loss_ddi, meds, n_med, ddi_A, target_ddi, coef=2.5):
    loss_bce, loss_multi, labels = bce_and_margin(result, meds, n_med)
    rate = ddi_rate_score(labels, ddi_A)
    if rate <= target_ddi:
        return 0.95 * loss_bce + 0.05 * loss_multi, rate
    beta = min(math.exp(coef * (1 - rate / target_ddi)), 1)
    return beta * (0.95 * loss_bce + 0.05 * loss_multi) + (1 - beta) * loss_ddi, rate


@pytest.mark.parametrize("encoder", ["gnn", "embedding"])
@pytest.mark.parametrize("target_ddi", [0.06, 0.9])
def test_loss_and_gradients_equal_the_official_computation(cohort, monkeypatch, encoder, target_ddi):
    model, substructures = tiny_model(cohort, monkeypatch, substructure_encoder=encoder, target_ddi=target_ddi)
    model.train()
    batch = cohort.batches("train", len(cohort.train_idx))[0]
    batch = VisitBatch(**{**batch.__dict__, "target": batch.target.double()})
    with torch.no_grad():  # shift the logits so that half of the predicted sets hold the interacting medication 3
        model.score[2].bias -= model(batch)[batch.visit_mask][:, 2].median() - 1e-9
    fragments = [set().union(*(brics(s) for s in meds)) for meds in TINY_SMILES]
    used = [s for s in substructures if any(s in f for f in fragments)]
    assert len(used) == len(substructures) - 1  # the unused one is dropped
    mask = torch.tensor([[float(s in f) for s in used] for f in fragments], dtype=torch.float64)
    counts = [len(meds) for meds in TINY_SMILES]
    projection = torch.zeros(len(counts), sum(counts), dtype=torch.float64)
    for i, c in enumerate(counts):
        projection[i, sum(counts[:i]):sum(counts[:i]) + c] = 1 / c
    drug = {"mol": ogb_graph([s for meds in TINY_SMILES for s in meds]), "sub": ogb_graph(used), "layers": 2,
            "average_projection": projection, "ddi_mask_H": mask, "ddi_adj": cohort.ddi_adj.double()}
    params = dict(model.named_parameters())

    patients = [cohort.patients[i] for i in cohort.train_idx]
    losses, rates = [], []
    for visits in patients:
        for t, adm in enumerate(visits):
            prefix = [(a[0], a[1]) for a in visits[:t + 1]]
            result, loss_ddi = official_forward(params, prefix, drug, 2, encoder == "embedding")
            loss, rate = official_visit_loss(result, loss_ddi, [int(m) - 1 for m in adm[2]], cohort.n_med,
                                             cohort.ddi_adj, target_ddi)
            losses.append(loss)
            rates.append(rate)
    if target_ddi < 0.5:  # both sides of the DDI target are exercised
        assert min(rates) <= target_ddi < max(rates), rates
    reference = torch.stack(losses).mean()

    ours = model.calculate_loss(batch)
    assert torch.allclose(ours, reference, rtol=1e-10, atol=1e-12), (float(ours), float(reference))
    names = list(params)
    got = torch.autograd.grad(ours, [params[n] for n in names])
    want = torch.autograd.grad(reference, [params[n] for n in names], allow_unused=True)
    for name, g, w in zip(names, got, want):
        assert w is not None, name
        assert torch.allclose(g, w, rtol=1e-8, atol=1e-11), name
    assert [n for n, g in zip(names, got) if not g.abs().sum() > 0] == []  # every parameter receives a gradient


def test_atom_and_bond_features_follow_ogb():
    from rdkit import Chem

    # OGB's own example (ogb/utils/features.py): the chiral carbon and the E double bond of Cl[C@H](/C=C/C)Br
    mol = Chem.MolFromSmiles("Cl[C@H](/C=C/C)Br")
    assert atom_features(mol.GetAtomWithIdx(1)) == [5, 2, 4, 5, 1, 0, 2, 0, 0]
    assert bond_features(mol.GetBondWithIdx(2)) == [1, 2, 0]
    graph = ogb_graph(["CCO", "not a smiles", "[1*]C(=O)O"])
    assert graph["x"][0].tolist() == [5, 0, 4, 5, 3, 0, 2, 0, 0]      # CH3: degree 4 with hydrogens, 3 H
    assert graph["x"][3, 0] == 118                                       # dummy atom 0 -> "misc"
    assert graph["graph"].tolist() == [0, 0, 0, 2, 2, 2, 2]            # unparseable SMILES: empty graph
    assert graph["edge_index"][:, :2].tolist() == [[0, 1], [1, 0]]      # both directions of every bond


def test_options_are_checked(cohort, monkeypatch):
    with pytest.raises(UserError, match="sab_heads"):
        tiny_model(cohort, monkeypatch, sab_heads=3)
    with pytest.raises(UserError, match="gnn_layers"):
        tiny_model(cohort, monkeypatch, gnn_layers=1)
    with pytest.raises(UserError, match="substructure_encoder"):
        tiny_model(cohort, monkeypatch, substructure_encoder="fingerprint")


def test_learns_planted_medications():
    data = make_synthetic(n_patients=150, n_diag=40, n_proc=15, n_med=16, seed=3)
    train, test = data.batches("train", 16), data.batches("test", 64)
    torch.manual_seed(0)
    model = MoleRec({"dropout_prob": 0.3, "gnn_layers": 2}, data)
    before = evaluate(model, test, data.ddi_adj)
    losses = fit(model, train, epochs=20, lr=5e-3, seed=0)
    after = evaluate(model, test, data.ddi_adj)
    # trivial baseline: every visit gets the medications prescribed in at least half of the training visits
    meds = data.train_visits()[2]
    freq = torch.zeros(data.n_med)
    for m in meds:
        freq[torch.as_tensor(m) - 1] += 1
    popular = (freq / len(meds) >= 0.5).float()
    jac = []
    for batch in test:
        inter = (batch.target * popular).sum(-1)
        union = ((batch.target + popular) > 0).float().sum(-1).clamp(min=1)
        m = batch.visit_mask.float()
        jac.append(((inter / union) * m).sum(1) / m.sum(1))
    baseline = float(torch.cat(jac).mean())
    # measured: Jaccard 0.54 after training, 0.41 untrained and for the popular set (2 cores, one thread)
    assert after["jaccard"] > max(baseline, before["jaccard"]) + 0.08, (after, before, baseline)
    assert after["ddi"] <= 2 * after["data_ddi"], after
    assert losses[-1] < losses[0] - 0.1, losses


def test_runs_through_quick_start_and_reloads(tmp_path):
    from recbole_ext import quick_start
    from tests.conftest import assert_same_metrics, reevaluated_test_result
    from tests.test_medrec_models_e2e import FAST

    result = quick_start.run("MoleRec", "synth-ehr-small", config_dict={**FAST, "runs_root": str(tmp_path)})
    assert result.task == "medrec" and result.checkpoint and len(result.history) == 1
    # the reported metrics are those of the saved model, reloaded from its checkpoint
    assert_same_metrics(reevaluated_test_result(result), result.test_result)
    config, model, dataset, *_ = quick_start.load_run(result.checkpoint, {"runs_root": result.run_dir})
    assert type(model).__name__ == "MoleRec" and model.sub_mask.shape[0] == dataset.n_med


def test_dropout_acts_on_each_code_embedding_before_the_visit_sum():
    from recbole_ext.models.medrec.base import DiagProcHistory

    torch.manual_seed(0)
    history = DiagProcHistory(3, 1, 200, 4, 0.5, code_dropout=True).train()
    codes = torch.tensor([[[1, 2]]])
    out = history.visit_sum(history.diag_emb, codes)[0, 0]
    e1, e2 = (history.diag_emb.weight[i].detach() * 2 for i in (1, 2))    # kept embeddings are scaled by 1/(1-p)
    candidates = torch.stack([torch.zeros_like(e1), e1, e2, e1 + e2])       # each code kept or dropped on its own
    assert ((candidates - out.detach()).abs() < 1e-6).any(0).all()
    assert ((out - e1).abs() < 1e-6).any() and ((out - e2).abs() < 1e-6).any()  # some coordinates keep one code
