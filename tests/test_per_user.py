"""Per-user test values of a run: they average to the reported metrics and belong to the users they name."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from recbole_ext import quick_start, registry
from tests.medrec_reference import MedLogReg

ROOT = Path(__file__).resolve().parents[1]
# RecBole rounds reported metrics to metric_decimal_place; 20 places leave a float64 as it is, so "the mean of the
# per-user values equals the reported metric" is checked before rounding, up to summation order.
EXACT = {"metric_decimal_place": 20}
TOPK = {"metrics": ["Recall", "MRR", "NDCG", "Hit", "Precision", "MAP", "ItemCoverage", "GiniIndex"],
        "topk": [1, 5, 10], "valid_metric": "recall@10", **EXACT}
DECOMPOSABLE = ("recall", "mrr", "ndcg", "hit", "precision", "map")


def _check_means(result):
    per_user = result.per_user_test
    n = len(per_user["users"])
    assert n > 0 and all(len(v) == n for v in per_user["metrics"].values())
    for name, values in per_user["metrics"].items():
        assert np.mean(values) == pytest.approx(result.test_result[name], rel=0, abs=1e-14), name
    return per_user


def _stored(result):
    run_dir = Path(result.run_dir)
    assert json.loads((run_dir / "per_user_test.json").read_text()) == result.per_user_test
    summary = json.loads((run_dir / "result.json").read_text())
    assert "per_user_test" not in summary and summary["test_result"] == result.test_result


def test_recbole_full_ranking_per_user_values(tiny, tmp_path, one_thread):
    result = quick_start.run("BPR", "tiny", {**tiny, **TOPK, "run_dir": str(tmp_path / "bpr")})
    per_user = _check_means(result)
    assert set(per_user["metrics"]) == {f"{m}@{k}" for m in DECOMPOSABLE for k in (1, 5, 10)}
    assert "itemcoverage@10" in result.test_result and "giniindex@10" in result.test_result  # not per user
    _stored(result)

    # The rows belong to the users they name: recompute Recall@10 and NDCG@10 of every test user from the
    # checkpoint's scores, masking training and validation items as RecBole does at test time.
    config, model, dataset, _, _, test = quick_start.load_run(result.checkpoint)
    uids = torch.as_tensor(np.asarray(dataset.token2id(dataset.uid_field, per_user["users"])))
    with torch.no_grad():
        scores = model.full_sort_predict(_users(dataset, uids)).view(len(uids), -1)
    scores[:, 0] = -np.inf
    for row, u in enumerate(uids.tolist()):
        scores[row, test.uid2history_item[u]] = -np.inf
    top = torch.topk(scores, 10).indices.numpy()
    for row, u in enumerate(uids.tolist()):
        positives = set(test.uid2positive_item[u].tolist())
        hits = np.array([i in positives for i in top[row]])
        recall = hits.sum() / len(positives)
        ideal = (1 / np.log2(np.arange(2, 2 + min(len(positives), 10)))).sum()
        ndcg = (hits / np.log2(np.arange(2, 12))).sum() / ideal
        assert per_user["metrics"]["recall@10"][row] == pytest.approx(recall, abs=1e-12)
        assert per_user["metrics"]["ndcg@10"][row] == pytest.approx(ndcg, abs=1e-12)


def _users(dataset, uids):
    from recbole.data.interaction import Interaction

    return Interaction({dataset.uid_field: uids})


def test_recbole_sampled_ranking_per_user_values(tiny, tmp_path, one_thread):
    """uni50 evaluation: candidate rows are scattered into score rows by row_idx; users follow the same map."""
    config = {**tiny, **TOPK, "eval_args": {"split": {"RS": [0.8, 0.1, 0.1]}, "order": "RO", "group_by": "user",
                                            "mode": "uni50"}, "run_dir": str(tmp_path / "uni")}
    result = quick_start.run("BPR", "tiny", config)
    per_user = _check_means(result)
    _, _, dataset, _, _, test = quick_start.load_run(result.checkpoint)
    uid = dataset.uid_field
    evaluated = dataset.id2token(uid, np.unique(test._dataset.inter_feat[uid].numpy()))
    assert sorted(per_user["users"]) == sorted(evaluated.tolist())


@pytest.fixture
def tiny_mm(tmp_path, monkeypatch):
    from recbole_ext.data.prepare.synthetic_mm import main

    monkeypatch.setenv("RECBOLE_EXT_DATA", str(tmp_path / "root"))
    assert main(["--name", "tinymm", "--users", "80", "--items", "50", "--interactions", "800", "--seed", "1"]) == 0
    return {"state": "WARNING", "show_progress": False, "epochs": 1, "train_batch_size": 256, **EXACT}


def test_mmrec_and_faiss_per_user_values(tiny_mm, tmp_path, one_thread):
    """The MMRec trainer (its own evaluate) and the FAISS mixin (its own batch scoring) keep the per-user rows."""
    yaml = [str(ROOT / "properties" / "dataset" / "synth-mm.yaml")]
    dense = quick_start.run("BPR", "tinymm", {**tiny_mm, "run_dir": str(tmp_path / "dense")}, config_files=yaml)
    faiss = quick_start.run("BPR", "tinymm", {**tiny_mm, "retrieval": "faiss", "run_dir": str(tmp_path / "faiss")},
                            config_files=yaml)
    per_user = _check_means(dense)
    assert set(per_user["metrics"]) == set(dense.test_result)  # Recall, NDCG, Precision, MAP: all per user
    _check_means(faiss)
    assert faiss.per_user_test == per_user  # same seed, exact index: the same values for the same users
    _stored(faiss)


@pytest.fixture(scope="module")
def medrec_run(tmp_path_factory):
    registry.register_model(MedLogReg)
    runs = tmp_path_factory.mktemp("runs")
    return quick_start.run("MedLogReg", "synth-ehr-small",
                           config_dict={"epochs": 2, "learning_rate": 0.05, "runs_root": str(runs),
                                        "patients_per_batch": 32, "show_progress": False, "state": "WARNING",
                                        **EXACT})


def test_medrec_per_patient_values(medrec_run):
    """Per patient on the whole test split; the reported test value is a bootstrap mean, so the comparison is with
    the same metrics computed once on every test patient."""
    from recbole_ext.evaluation.medrec_metrics import ddi_pairs_per_visit, medrec_scores
    from recbole_ext.training.medrec import MedRecTrainer

    per_user = medrec_run.per_user_test
    _stored(medrec_run)
    config, model, dataset, _, _, test = quick_start.load_run(medrec_run.checkpoint)
    trainer = MedRecTrainer(config, model)
    prob, target, patient = trainer.predict_split(test)
    adj = dataset.ddi_adj.numpy()
    full = medrec_scores(prob, target, patient, adj)
    test_patients = dataset.data.patient_tokens[dataset.split_patients("test")]
    assert per_user["users"] == [str(t) for t in test_patients]  # every test patient, in split order
    values = {k: np.asarray(v) for k, v in per_user["metrics"].items()}
    assert set(values) == set(full)
    for name in ("jaccard", "f1", "prauc"):  # per visit, mean per patient, mean over patients: equal
        assert values[name].mean() == pytest.approx(full[name], rel=0, abs=1e-14), name
    # The pooled ratios equal weighted means of the per-patient values: DDI rate weighted by each patient's
    # predicted pairs, the average number of drugs by each patient's visits.
    visits = np.bincount(patient)
    pairs = np.bincount(patient, weights=ddi_pairs_per_visit(prob >= 0.5, adj)[1])
    assert pairs.sum() > 0 and np.average(values["ddi_rate"], weights=pairs) == pytest.approx(full["ddi_rate"],
                                                                                             rel=1e-12)
    assert np.average(values["avg_med"], weights=visits) == pytest.approx(full["avg_med"], rel=1e-12)
    # a patient's own values: the first test patient's Jaccard is the mean over its visits
    first = patient == 0
    jac = ((prob[first] >= 0.5) & target[first]).sum(1) / ((prob[first] >= 0.5) | target[first]).sum(1)
    assert values["jaccard"][0] == pytest.approx(np.nan_to_num(jac).mean(), abs=1e-12)
