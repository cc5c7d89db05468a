"""Medication models on synthetic visits with planted diagnosis->medication effects (no medication task needed)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from recbole_ext.errors import UserError
from recbole_ext.models.medrec import MODELS
from recbole_ext.models.medrec import causal
from recbole_ext.models.medrec.base import MedRecModel, margin_targets, multihot, set_ddi_rate
from recbole_ext.models.medrec.cafemed import (CHARM, CafeMed, CausalMed, CausalWeightGenerator, StaticRelationalGraph,
                                              SumPooling, VisitNodes)
from recbole_ext.models.medrec.context_adapter import MedDeepFM, MedFM, MedWideDeep
from recbole_ext.models.medrec.gamenet import GAMENet
from recbole_ext.models.medrec.retain import RETAIN
from recbole_ext.models.medrec.molerec import MoleRec
from recbole_ext.models.medrec.safedrug import SafeDrug
from recbole_ext.testing.medrec_synthetic import evaluate, fit, make_synthetic

ALL_MODELS = [CafeMed, CausalMed, RETAIN, GAMENet, SafeDrug, MoleRec, MedFM, MedDeepFM, MedWideDeep]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data():
    return make_synthetic(n_patients=240, n_diag=50, n_proc=20, n_med=20, seed=3)


@pytest.fixture(scope="module")
def tiny():
    # enough medications for a sparse co-prescription graph (GAMENet memory rows must differ)
    return make_synthetic(n_patients=24, n_diag=30, n_proc=8, n_med=40, effects_per_diag=1, seed=5)


def build(cls, dataset, seed=0, **cfg):
    torch.manual_seed(seed)
    return cls(cfg, dataset)


# -- causal effects --------------------------------------------------------------------------------------------
def test_risk_difference_matches_direct_probabilities():
    rng = np.random.default_rng(0)
    x = (rng.random((200, 7)) < 0.3).astype(float)
    y = (rng.random((200, 5)) < 0.4).astype(float)
    x[:, 6] = 0  # never seen -> 0
    got = causal.risk_difference(causal.sp.csr_matrix(x), causal.sp.csr_matrix(y))
    for a in range(6):
        on = x[:, a] == 1
        np.testing.assert_allclose(got[a], y[on].mean(0) - y[~on].mean(0), atol=1e-12)
    assert not got[6].any()


def test_effects_recover_planted_structure(data):
    c_dm, c_pm = causal.causal_effects(data.train_visits(), data.n_diag, data.n_proc, data.n_med)
    assert c_dm.shape == (data.n_diag, data.n_med) and c_pm.shape == (data.n_proc, data.n_med)
    seen = np.zeros(data.n_diag, bool)
    seen[np.concatenate(data.train_visits()[0]) - 1] = True
    corr = np.corrcoef(c_dm[seen].ravel(), data.planted_dm[seen].ravel())[0, 1]
    assert corr > 0.6, corr
    assert np.all(c_dm[~seen] == 0)


def test_effects_cached_by_content(data, tmp_path, monkeypatch):
    first = causal.causal_effects(data.train_visits(), data.n_diag, data.n_proc, data.n_med)
    files = list((tmp_path / ".cache" / "causal_effects").glob("*.npz"))
    assert len(files) == 1
    monkeypatch.setattr(causal, "risk_difference", lambda *a: (_ for _ in ()).throw(AssertionError("recomputed")))
    again = causal.causal_effects(data.train_visits(), data.n_diag, data.n_proc, data.n_med)
    np.testing.assert_array_equal(first[0], again[0])
    d, p, m = data.train_visits()
    with pytest.raises(AssertionError, match="recomputed"):  # other visits -> other key
        causal.causal_effects((d[1:], p[1:], m[1:]), data.n_diag, data.n_proc, data.n_med)


def test_corrupt_cache_entry_is_recomputed(data, tmp_path):
    first = causal.causal_effects(data.train_visits(), data.n_diag, data.n_proc, data.n_med)
    (entry,) = (tmp_path / ".cache" / "causal_effects").glob("*.npz")
    entry.write_bytes(b"not an npz file")
    again = causal.causal_effects(data.train_visits(), data.n_diag, data.n_proc, data.n_med)
    np.testing.assert_array_equal(first[1], again[1])
    with np.load(entry) as z:  # and the entry was rewritten
        np.testing.assert_array_equal(z["c_dm"], first[0])


def test_effects_reject_out_of_range_ids(data):
    d, p, m = data.train_visits()
    with pytest.raises(UserError, match="diagnosis ids"):
        causal.causal_effects(([np.array([data.n_diag + 1])] + d[1:], p, m), data.n_diag, data.n_proc, data.n_med)


def test_cafemed_uses_training_visits_only(data):
    model = build(CafeMed, data)
    c_train, _ = causal.causal_effects(data.train_visits(), data.n_diag, data.n_proc, data.n_med)
    np.testing.assert_array_equal(model.c_dm[1:, 1:].numpy(), c_train)
    everyone = [v for p in data.patients for v in p]
    c_all, _ = causal.causal_effects(([v[0] for v in everyone], [v[1] for v in everyone], [v[2] for v in everyone]),
                                     data.n_diag, data.n_proc, data.n_med)
    assert not np.allclose(c_all, c_train)


# -- contract shared by every model --------------------------------------------------------------------------
@pytest.mark.parametrize("cls", ALL_MODELS, ids=lambda c: c.__name__)
def test_no_peeking_at_current_or_future_visits(cls, tiny):
    """Logits of visit t depend on diag/proc of visits <= t and medications of visits < t only."""
    model = build(cls, tiny).eval()
    batch = tiny.batches("train", 8)[0]
    assert batch.visit_mask.sum(1).max() >= 2
    with torch.no_grad():
        base = model.forward(batch)
        t = 1
        changed = type(batch)(**{k: v.clone() for k, v in batch.__dict__.items()})
        changed.med[:, t:] = torch.where(changed.med[:, t:] > 0, changed.med[:, t:] % tiny.n_med + 1, 0)
        changed.diag[:, t + 1:] = torch.where(changed.diag[:, t + 1:] > 0, 1, 0)
        changed.target = multihot(changed.med, tiny.n_med)  # models may read earlier targets as history
        assert not torch.equal(changed.target[:, t], batch.target[:, t])
        after = model.forward(changed)
    keep = batch.visit_mask.clone()
    keep[:, t + 1:] = False
    assert torch.allclose(base[keep], after[keep], atol=1e-6)
    later = batch.visit_mask.clone()
    later[:, :t + 1] = False
    assert not torch.allclose(base[later], after[later])  # and the history does matter


@pytest.mark.parametrize("cls", ALL_MODELS, ids=lambda c: c.__name__)
def test_shapes_probabilities_and_gradients(cls, tiny):
    model = build(cls, tiny)
    batch = tiny.batches("train", 8)[0]
    loss = model.calculate_loss(batch)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is None or torch.isfinite(g).all() for g in grads)
    assert sum(float(g.abs().sum()) for g in grads if g is not None) > 0
    model.eval()
    prob = model.predict_visits(batch)
    assert prob.shape == (*batch.visit_mask.shape, tiny.n_med)
    assert ((prob >= 0) & (prob <= 1)).all()


def test_registry_names_and_recbole_attributes():
    import recbole_ext  # noqa: F401
    from recbole.config import Config

    for name, spec in MODELS.items():
        module, _, attr = spec.partition(":")
        cls = getattr(__import__(module, fromlist=[attr]), attr)
        assert issubclass(cls, MedRecModel) and hasattr(cls, "type") and hasattr(cls, "input_type")
    config = Config(model="CafeMed", dataset="no_such_dataset", config_dict={"data_path": "."})
    assert config["use_cwg"] is True and config["target_ddi"] == 0.06 and config["dropout_prob"] == 0.7


# -- CafeMed: switches and reconstruction invariants ----------------------------------------------------------
def test_ablation_switches_select_modules(tiny):
    full = build(CafeMed, tiny)
    assert isinstance(full.graph, CausalWeightGenerator) and full.graph.dynamic and isinstance(full.pool, CHARM)
    backbone = build(CafeMed, tiny, use_cwg=False, use_charm=False)
    assert isinstance(backbone.graph, StaticRelationalGraph) and not isinstance(backbone.pool, CHARM)
    linear = build(CafeMed, tiny, use_cwg=False, static_graph="linear")
    assert isinstance(linear.graph, CausalWeightGenerator) and not linear.graph.dynamic
    with pytest.raises(UserError, match="static_graph"):
        build(CafeMed, tiny, static_graph="gnn")
    from_cli = build(CafeMed, tiny, use_cwg="False", use_charm="false")  # command-line strings
    assert isinstance(from_cli.graph, StaticRelationalGraph) and not isinstance(from_cli.pool, CHARM)
    with pytest.raises(UserError, match="not a boolean"):
        build(CafeMed, tiny, use_cwg="maybe")


def test_both_switches_off_is_the_causalmed_backbone(tiny):
    a = build(CafeMed, tiny, seed=7, use_cwg=False, use_charm=False).eval()
    b = build(CausalMed, tiny, seed=7, use_cwg=True, use_charm=True).eval()  # CausalMed forces both off
    assert a.state_dict().keys() == b.state_dict().keys()
    batch = tiny.batches("test", 16)[0]
    with torch.no_grad():
        assert torch.equal(a(batch), b(batch))


def test_switches_change_the_computation(tiny):
    batch = tiny.batches("test", 16)[0]
    outs = {}
    for cwg in (False, True):
        for charm in (False, True):
            with torch.no_grad():
                outs[cwg, charm] = build(CafeMed, tiny, seed=1, use_cwg=cwg, use_charm=charm).eval()(batch)
    keys = list(outs)
    for i in range(len(keys)):
        for j in range(i + 1, len(keys)):
            assert not torch.allclose(outs[keys[i]], outs[keys[j]])
    # effects reach the output through the graph: zeroing them changes CafeMed's prediction
    model = build(CafeMed, tiny, seed=1).eval()
    with torch.no_grad():
        before = model(batch)
        model.c_dm.zero_()
        model.c_pm.zero_()
        assert not torch.allclose(before, model(batch))


def test_cwg_with_neutral_gate_equals_static_effects():
    """g = 1/2 gives omega = C: the "w/o CWG" (linear) variant is the CWG with its gate switched off."""
    torch.manual_seed(0)
    dyn = CausalWeightGenerator(8, 4, threshold=None, dynamic=True)
    static = CausalWeightGenerator(8, 1, threshold=None, dynamic=False)
    static.load_state_dict({k: v for k, v in dyn.state_dict().items() if k in static.state_dict()
                            and static.state_dict()[k].shape == v.shape}, strict=False)
    for side in ("diag", "proc"):
        for name in ("value", "back", "norm"):
            static.sides[side][name].load_state_dict(dyn.sides[side][name].state_dict())
        torch.nn.init.zeros_(dyn.sides[side]["score"].weight)
    static.state.load_state_dict(dyn.state.state_dict())
    static.med_norm.load_state_dict(dyn.med_norm.state_dict())
    n, ld, lp, lm = 3, 4, 2, 5
    args = (torch.randn(n, ld, 8), torch.randn(n, lp, 8), torch.randn(n, lm, 8), torch.ones(n, ld, dtype=torch.bool),
            torch.ones(n, lp, dtype=torch.bool), torch.ones(n, lm, dtype=torch.bool), torch.rand(n, ld, lm),
            torch.rand(n, lp, lm), torch.tensor([False, False, True]))
    for got, want in zip(dyn(*args), static(*args)):
        assert torch.allclose(got, want, atol=1e-6)
    assert torch.equal(dyn(*args)[0][2], args[0][2])  # first visit: nothing propagated


def test_rgcn_relation_levels_follow_causalmed_bucketing():
    graph = StaticRelationalGraph(4, threshold=0.2)
    c = torch.tensor([[[0.1, 0.3, 0.45, 0.85, 1.0]]])
    adj = graph._adjacency(c, torch.ones(1, 1, dtype=torch.bool), torch.ones(1, 5, dtype=torch.bool),
                           torch.tensor([False]))
    levels = adj[0, 0].argmax(-1).tolist()
    present = adj[0, 0].sum(-1) > 0
    assert present.tolist() == [False, True, True, True, True]
    assert levels[1:] == [1, 2, 4, 4]
    first = graph._adjacency(torch.zeros(1, 2, 3), torch.ones(1, 2, dtype=torch.bool),
                             torch.tensor([[True, False, False]]), torch.tensor([True]))
    assert first[0, :, 0, 0].tolist() == [1.0, 1.0] and first[0, :, 1:].sum() == 0  # placeholder level-0 edges


def test_rgcn_weights_have_glorot_bound_per_relation():
    """Every relation matrix [d_in, d_out] (and the root weight) is U(-b, b) with b = sqrt(6 / (d_in + d_out)), as
    PyG's RGCNConv initialises them; xavier on the 3-D stack would give a bound ~3.7x smaller at d = 16."""
    from recbole_ext.models.medrec.cafemed import N_LEVELS

    torch.manual_seed(0)
    dim = 16
    graph = StaticRelationalGraph(dim)
    bound = (6.0 / (dim + dim)) ** 0.5
    for rel in graph.relations:
        assert rel.shape == (2 * N_LEVELS, dim, dim)
        for w in rel.detach():  # 256 draws per relation: the max |w| is within 3 % of the bound with near certainty
            assert 0.9 * bound < w.abs().max() <= bound
        # std of U(-b, b) is b / sqrt(3) = sqrt(2 / (d_in + d_out)); 3,072 draws: sampling error ~1.3 %
        assert abs(rel.detach().std().item() / (2.0 / (dim + dim)) ** 0.5 - 1) < 0.05
    for root in graph.roots:
        assert 0.9 * bound < root.weight.detach().abs().max() <= bound and not root.bias.any()


# -- losses ------------------------------------------------------------------------------------------------------
def test_margin_targets_and_ddi_rate():
    target = torch.tensor([[0, 1, 0, 1.0], [1, 0, 0, 0]])
    assert margin_targets(target).tolist() == [[1, 3, -1, -1], [0, -1, -1, -1]]
    adj = torch.zeros(4, 4)
    adj[0, 1] = adj[1, 0] = 1
    sets = torch.tensor([[1, 1, 1, 0.0], [1, 0, 0, 0]])
    assert set_ddi_rate(sets, adj).tolist() == pytest.approx([1 / 3, 0.0])


def test_ddi_controlled_loss_schedule(tiny):
    model = build(CafeMed, tiny, target_ddi=0.06, ddi_anneal_coef=2.5)
    model.ddi_adj.zero_()
    model.ddi_adj[0, 1] = model.ddi_adj[1, 0] = 1
    logits = torch.full((2, tiny.n_med), -5.0)
    logits[0, :3] = 5.0  # predicted {0,1,2}: DDI rate 1/3 > target
    target = torch.zeros(2, tiny.n_med)
    target[:, 0] = 1
    got = model.visit_losses(logits, target)
    model.use_ddi_loss = False
    task = model.visit_losses(logits, target)
    prob = torch.sigmoid(logits[0])
    ddi = 0.0005 * 2 * prob[0] * prob[1]
    beta = min(np.exp(2.5 * (1 - (1 / 3) / 0.06)), 1.0)
    assert float(got[0]) == pytest.approx(beta * float(task[0]) + (1 - beta) * float(ddi), rel=1e-5)
    assert float(got[1]) == pytest.approx(float(task[1]), rel=1e-6)  # safe set: plain task loss
    model.ddi_beta = "linear"
    model.use_ddi_loss = True
    assert float(model.visit_losses(logits, target)[0]) == pytest.approx(float(ddi), rel=1e-5)  # beta clamps at 0
    model.ddi_beta = "linear_min"  # SafeDrug's released script: min(0, 1 + (0.06 - 1/3) / 0.05) = -4.47
    beta = 1 + (0.06 - 1 / 3) / 0.05
    assert float(model.visit_losses(logits, target)[0]) == pytest.approx(
        beta * float(task[0]) + (1 - beta) * float(ddi), rel=1e-5)


def test_task_loss_gradient_matches_finite_differences(tiny):
    model = build(CafeMed, tiny, use_ddi_loss=False, margin_on="logit").double()
    target = (torch.rand(3, tiny.n_med) < 0.3).double()
    target[:, 0] = 1
    logits = torch.randn(3, tiny.n_med, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(lambda z: model.visit_losses(z, target).sum(), (logits,))


def test_margin_on_probabilities_is_the_published_default(tiny):
    logits = torch.randn(2, tiny.n_med)
    target = (torch.rand(2, tiny.n_med) < 0.3).float()
    target[:, 0] = 1
    faithful = build(CafeMed, tiny, use_ddi_loss=False)
    corrected = build(CafeMed, tiny, use_ddi_loss=False, margin_on="logit")
    assert faithful.margin_on == "prob"
    assert not torch.allclose(faithful.visit_losses(logits, target), corrected.visit_losses(logits, target))


# -- training behaviour ---------------------------------------------------------------------------------------
def test_same_seed_same_numbers(tiny):
    results = []
    for _ in range(2):
        model = build(CafeMed, tiny, seed=11)
        losses = fit(model, tiny.batches("train", 8), epochs=2, seed=11)
        results.append((losses, evaluate(model, tiny.batches("test", 16), tiny.ddi_adj)))
    assert results[0] == results[1]


def test_cafemed_beats_retain_and_recbole_context_models(data):
    train, test = data.batches("train", 32), data.batches("test", 64)
    scores = {}
    for cls, cfg in ((CafeMed, {"dropout_prob": 0.3}), (RETAIN, {}), (MedFM, {}), (MedDeepFM, {}), (MedWideDeep, {})):
        model = build(cls, data, seed=0, **cfg)
        fit(model, train, epochs=12, lr=3e-3, seed=0)
        scores[cls.__name__] = evaluate(model, test, data.ddi_adj)
    cafe, retain = scores["CafeMed"], scores["RETAIN"]
    assert cafe["jaccard"] > retain["jaccard"] + 0.02, scores
    for name in ("MedFM", "MedDeepFM", "MedWideDeep"):
        assert cafe["jaccard"] > scores[name]["jaccard"], scores
    assert cafe["ddi"] <= cafe["data_ddi"], scores


# -- baselines ------------------------------------------------------------------------------------------------
def test_context_adapter_uses_recbole_classes_unchanged(tiny):
    from recbole.model.context_aware_recommender import FM, DeepFM, WideDeep

    for cls, inner in ((MedFM, FM), (MedDeepFM, DeepFM), (MedWideDeep, WideDeep)):
        model = build(cls, tiny)
        assert type(model.inner) is inner
        assert model.inner.token_seq_field_names == ["diag", "proc", "prev_med"]
        assert model.inner.token_field_names == ["med_id"]
    batch = tiny.batches("train", 4)[0]
    interaction, n_visits = build(MedFM, tiny).pair_interaction(batch)
    assert len(interaction) == n_visits * tiny.n_med
    assert torch.equal(interaction["label"].reshape(n_visits, -1), batch.target[batch.visit_mask])
    with pytest.raises(UserError, match="context-aware"):
        build(__import__("recbole_ext.models.medrec.context_adapter", fromlist=["MedContext"]).MedContext, tiny,
              context_model="BPR")


def test_safedrug_molecular_resources(tiny):
    model = build(SafeDrug, tiny)
    assert model.sub_mask.shape == (tiny.n_med, 491) and model.sub_mask.sum() > 0
    assert model.molecules().shape == (tiny.n_med, model.embedding_size)

    class NoSmiles:
        n_diag, n_proc, n_med, ddi_adj = tiny.n_diag, tiny.n_proc, 2, torch.zeros(2, 2)
        med_tokens = ["XXXX", "YYYY"]

        def train_visits(self):
            return tiny.train_visits()

    with pytest.raises(UserError, match="SMILES"):
        SafeDrug({}, NoSmiles())


def _pairs(med_lists):
    return {(a, b) for meds in med_lists for a in meds - 1 for b in meds - 1 if a != b}


def test_gamenet_co_prescription_graph_from_training(tiny):
    """The EHR graph has an edge exactly where two medications share a training visit: a pair prescribed together
    only in a test visit has none."""
    import dataclasses

    train_pairs = _pairs(tiny.train_visits()[2])
    a, b = next((i, j) for i in range(tiny.n_med) for j in range(i + 1, tiny.n_med) if (i, j) not in train_pairs)
    patients = list(tiny.patients)
    held_out = tiny.test_idx[0]
    diag, proc, med = patients[held_out][0]
    patients[held_out] = [(diag, proc, np.union1d(med, [a + 1, b + 1]))] + patients[held_out][1:]
    data = dataclasses.replace(tiny, patients=patients)
    adj = build(GAMENet, data).ehr_gcn.adj01  # the 0/1 graph with self-loops, row-normalised in forward
    assert adj.shape == (data.n_med, data.n_med) and set(adj.unique().tolist()) <= {0.0, 1.0}
    assert (adj.diagonal() == 1).all()
    off_diagonal = (adj > 0) & ~torch.eye(data.n_med, dtype=torch.bool)
    assert {tuple(e) for e in off_diagonal.nonzero().tolist()} == train_pairs
    assert not off_diagonal[a, b] and (a, b) in _pairs([v[2] for p in patients for v in p])


def test_bad_dataset_is_a_user_error():
    class NotMedical:
        n_items = 3

    with pytest.raises(UserError, match="medication dataset"):
        RETAIN({}, NotMedical())


def test_rgcn_matches_per_edge_reference():
    """The batched relational layers equal RGCN written edge by edge (mean per relation, root weight, ReLU)."""
    from recbole_ext.models.medrec.cafemed import N_LEVELS

    torch.manual_seed(0)
    graph = StaticRelationalGraph(8)
    n, ld, lp, lm = 3, 4, 2, 5
    args = (torch.randn(n, ld, 8), torch.randn(n, lp, 8), torch.randn(n, lm, 8), torch.rand(n, ld) > 0.2,
            torch.rand(n, lp) > 0.2, torch.rand(n, lm) > 0.2, torch.rand(n, ld, lm), torch.rand(n, lp, lm),
            torch.tensor([True, False, False]))
    adj = [graph._adjacency(args[6], args[3], args[5], args[8]), graph._adjacency(args[7], args[4], args[5], args[8])]
    hd, hp, hm = args[:3]
    for layer, (root, rel) in enumerate(zip(graph.roots, graph.relations)):
        if layer:
            hd, hp, hm = hd.relu(), hp.relu(), hm.relu()
        new = [root(hd).clone(), root(hp).clone()]
        for side, h in enumerate((hd, hp)):
            for b in range(n):
                for i in range(h.shape[1]):
                    for j in range(lm):
                        for r in range(N_LEVELS):
                            new[side][b, i] += adj[side][b, i, j, r] * (hm[b, j] @ rel[side * N_LEVELS + r])
        hd, hp, hm = new[0], new[1], root(hm)
    for got, want in zip(graph(*args), (hd, hp, hm)):
        assert torch.allclose(got, want, atol=1e-5)


@pytest.mark.parametrize("cfg", [{}, {"use_cwg": False, "use_charm": False}, {"use_cwg": False, "static_graph": "linear"},
                                 {"cwg_node_gate": True, "charm_attend_med": True}, {"cwg_effect_threshold": "off"},
                                 {"charm_norm": "post", "charm_out_norm": True, "charm_rezero": False},
                                 {"charm_norm": "pre", "charm_attend_med": True, "charm_fusion": "maps"}])
def test_packed_nodes_equal_padded_reference(tiny, cfg):
    """The unpadded (packed) node layout computes the same loss and gradients as the padded reference layout."""
    _assert_layouts_agree(tiny, tiny.batches("train", 16)[0], cfg)
    with pytest.raises(UserError, match="node_layout"):
        build(CafeMed, tiny, node_layout="ragged")


@pytest.mark.parametrize("cfg", [{}, {"charm_attend_med": True}, {"charm_norm": "post", "charm_rezero": False}])
def test_layouts_agree_on_visits_without_procedures(tiny, cfg):
    """Visits with an empty procedure set (their diagnoses attend to one zero key in the reference layout, the
    pooled attention has no (diagnosis, procedure) pair for them): same loss and gradients in both layouts."""
    import dataclasses

    batch = tiny.batches("train", 16)[0]
    proc = batch.proc.clone()
    proc[0, :] = 0
    proc[1, 0] = 0
    _assert_layouts_agree(tiny, dataclasses.replace(batch, proc=proc), cfg)


def _assert_layouts_agree(tiny, batch, cfg):
    results = []
    for layout in ("padded", "packed"):
        model = build(CafeMed, tiny, seed=0, dropout_prob=0.0, node_layout=layout, **cfg)
        with torch.no_grad():  # ReZero scales start at 0; open them so the attention and refinement are compared too
            for name, param in model.named_parameters():
                if name.endswith("_scale"):
                    param.fill_(0.7)
        loss = model.calculate_loss(batch)
        loss.backward()
        results.append((loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}))
    (loss_pad, grad_pad), (loss_packed, grad_packed) = results
    assert torch.allclose(loss_pad, loss_packed, atol=1e-6)
    assert grad_pad.keys() == grad_packed.keys() and len(grad_pad) > 10
    for name in grad_pad:
        assert torch.allclose(grad_pad[name], grad_packed[name], atol=1e-5, rtol=1e-4), name


def _random_visit_nodes(seed=0, n_visits=6, dim=8):
    gen = torch.Generator().manual_seed(seed)
    codes = [torch.randint(0, 5, (n_visits, width), generator=gen) for width in (7, 4, 5)]
    for c in codes:
        c[:, 0] = c[:, 0].clamp(min=1)  # at least one code of each kind per visit
    nodes = VisitNodes(*codes)
    h = [torch.randn(len(getattr(nodes, f"{kind}_code")), dim, generator=gen) for kind in ("diag", "proc", "med")]
    return nodes, h


@pytest.mark.parametrize("out_norm", [True, False])
def test_charm_with_rezero_starts_as_sum_pooling(out_norm):
    """Default CHARM (pre-norm, ReZero) is sum pooling (+ out LayerNorm) at initialisation; v1 is not."""
    nodes, (h_d, h_p, h_m) = _random_visit_nodes()
    torch.manual_seed(0)
    charm = CHARM(8, heads=2, out_norm=out_norm)
    assert charm.norm == "pre" and charm.rezero
    pooled = SumPooling().packed(nodes, h_d, h_p, h_m)
    want = torch.nn.functional.layer_norm(pooled, (8,)) if out_norm else pooled
    got = charm.packed(nodes, h_d, h_p, h_m)
    assert torch.allclose(got, want, atol=1e-6)
    got.square().sum().backward()  # the scales still learn: the refinement can leave the identity
    assert charm.attention_scale.grad.abs() > 0 and charm.refine_scale.grad.abs() > 0
    torch.manual_seed(0)
    v1 = CHARM(8, heads=2, out_norm=out_norm, norm="post", rezero=False)
    assert not torch.allclose(v1.packed(nodes, h_d, h_p, h_m), want, atol=1e-3)


def test_charm_options_are_checked(tiny):
    for key in ("charm_norm", "charm_fusion"):
        with pytest.raises(UserError, match=key):
            build(CafeMed, tiny, **{key: "sideways"})
    v1 = build(CafeMed, tiny, charm_norm="post", charm_rezero=False, charm_out_norm=False, charm_fusion="maps")
    assert (v1.pool.norm, v1.pool.rezero, v1.pool.fusion) == ("post", False, "maps")
    assert isinstance(v1.pool.out_norm, torch.nn.Identity) and not hasattr(v1.pool, "attention_scale")


def test_packed_layout_handles_visits_without_procedures(tiny):
    """A visit with an empty procedure set: CHARM attends to one zero key, outputs and gradients stay finite."""
    import dataclasses

    batch = tiny.batches("train", 16)[0]
    proc = batch.proc.clone()
    proc[0, 0] = 0
    batch = dataclasses.replace(batch, proc=proc)
    model = build(CafeMed, tiny, seed=0, charm_attend_med=False)
    loss = model.calculate_loss(batch)
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    with torch.no_grad():
        assert torch.isfinite(model.eval()(batch)).all()


@pytest.mark.parametrize("variant,switch", [("CafeMedNoCWG", "use_cwg"), ("CafeMedNoCHARM", "use_charm")])
def test_named_ablations_equal_cafemed_with_the_switch_off(tiny, variant, switch):
    from recbole_ext.registry import model_class

    a = build(CafeMed, tiny, seed=3, **{switch: False}).eval()
    b = build(model_class(variant), tiny, seed=3, **{switch: True}).eval()  # the class forces the switch off
    batch = tiny.batches("test", 16)[0]
    with torch.no_grad():
        assert torch.equal(a(batch), b(batch))


def test_safedrug_without_rdkit_is_one_clear_error(tiny, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "rdkit" else real(name, *a))
    with pytest.raises(UserError, match="RDKit"):
        build(SafeDrug, tiny)


# -- fast paths of the packed layout (each against its reference) ------------------------------------------------
@pytest.mark.parametrize("lengths", [[2, 4, 1, 4, 3], [3, 3], [1]])
def test_stacked_gru_equals_nn_gru(lengths):
    """stacked_gru on packed visits = three nn.GRU calls on the padded grid, outputs and all gradients."""
    from recbole_ext.models.medrec.stacked_gru import PackedVisits, stacked_gru

    torch.manual_seed(0)
    grus = torch.nn.ModuleList(torch.nn.GRU(6, 5, batch_first=True) for _ in range(3))
    lengths = torch.tensor(lengths)
    mask = torch.arange(int(lengths.max())) < lengths[:, None]
    x = torch.randn(*mask.shape, 3, 6) * mask[..., None, None]
    probe = torch.randn(*mask.shape, 3, 5)
    results = []
    for fast in (False, True):
        inputs = x.clone().requires_grad_(True)
        if fast:
            seq = PackedVisits(mask)
            packed = inputs[mask].index_select(0, seq.visit_of_packed).transpose(0, 1).contiguous()
            out = stacked_gru(grus, packed, seq.batch_sizes).index_select(1, seq.packed_of_visit).transpose(0, 1)
        else:
            out = torch.stack([gru(inputs[:, :, i])[0] for i, gru in enumerate(grus)], 2)[mask]
        (out * probe[mask]).sum().backward()
        results.append((out.detach(), inputs.grad, [p.grad.clone() for p in grus.parameters()]))
        grus.zero_grad()
    (out_ref, dx_ref, dw_ref), (out_fast, dx_fast, dw_fast) = results
    assert torch.allclose(out_ref, out_fast, atol=1e-6)
    assert torch.allclose(dx_ref, dx_fast, atol=1e-6)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(dw_ref, dw_fast))
    with pytest.raises(ValueError, match="one-layer"):
        stacked_gru([torch.nn.GRU(6, 5, num_layers=2)], torch.zeros(1, 1, 6), [1])


def test_packed_visits_order():
    from recbole_ext.models.medrec.stacked_gru import PackedVisits

    mask = torch.tensor([[True, True, False], [True, True, True], [True, False, False]])
    seq = PackedVisits(mask)
    assert seq.batch_sizes == [3, 2, 1]
    # mask order: (0,0) (0,1) (1,0) (1,1) (1,2) (2,0); longest patient first within each step
    assert seq.packed_of_visit.tolist() == [1, 4, 0, 3, 5, 2]
    assert torch.equal(seq.packed_of_visit[seq.visit_of_packed], torch.arange(6))


@pytest.mark.parametrize("n_target", [3, 40])
def test_weighted_message_commutes_the_linear_map(n_target):
    """Both branches (map before the gather, map after the sum) equal the direct formula, gradients included."""
    from recbole_ext.models.medrec.cafemed import segment_sum, weighted_message

    torch.manual_seed(0)
    linear = torch.nn.Linear(4, 4, bias=False)
    rows = torch.randn(10, 4, requires_grad=True)
    weight = torch.randn(30, 1)
    source, target = torch.randint(0, 10, (30,)), torch.randint(0, n_target, (30,))
    direct = segment_sum(weight * linear(rows).index_select(0, source), target, n_target)
    fast = weighted_message(linear, rows, weight, source, target, n_target)
    assert torch.allclose(direct, fast, atol=1e-6)
    g_direct = torch.autograd.grad(direct.sum(), [rows, linear.weight])
    g_fast = torch.autograd.grad(fast.sum(), [rows, linear.weight])
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(g_direct, g_fast))
    with pytest.raises(ValueError, match="without bias"):
        weighted_message(torch.nn.Linear(4, 4), rows, weight, source, target, n_target)


def test_node_dropout_has_the_distribution_of_nn_dropout(tiny):
    """Packed node dropout: keep probability 1 - p, kept values scaled by 1 / (1 - p), placeholders zeroed; eval and
    p = 0 are the identity (up to the placeholder mask)."""
    from recbole_ext.models.medrec.base import previous_visit
    from recbole_ext.models.medrec.cafemed import VisitNodes

    batch = tiny.batches("train", 24)[0]
    mask = batch.visit_mask
    nodes = VisitNodes(batch.diag[mask], batch.proc[mask], previous_visit(batch.med)[mask])
    model = build(CafeMed, tiny, dropout_prob=0.7)
    torch.manual_seed(1)
    m_d, m_p, m_m = model._node_dropout(nodes)
    values = torch.cat([m_d, m_p]).flatten()
    kept = values[values != 0]
    assert torch.allclose(kept, torch.full_like(kept, 1 / 0.3))
    assert abs((values > 0).float().mean().item() - 0.3) < 0.02
    placeholder = nodes.med_code == 0
    assert placeholder.any() and (m_m[placeholder] == 0).all()
    model.eval()
    none_d, none_p, m_m = model._node_dropout(nodes)
    assert none_d is None and none_p is None and torch.equal(m_m.squeeze(-1), (~placeholder).float())
