"""Medication metrics against hand-computed values, sklearn, and the published bootstrap sequence."""
import numpy as np
import pytest

from recbole_ext.evaluation import medrec_metrics as mm


def test_set_scores_hand_values():
    pred = np.array([[1, 1, 0, 0], [0, 0, 0, 0], [1, 1, 1, 1]], bool)
    true = np.array([[1, 0, 1, 0], [1, 0, 0, 0], [1, 1, 0, 0]], bool)
    jac, f1 = mm.set_scores(pred, true)
    # visit 0: |∩|=1, |∪|=3; P=1/2, R=1/2 -> F1=1/2. visit 1: empty prediction -> 0, 0.
    # visit 2: |∩|=2, |∪|=4; P=2/4, R=2/2 -> F1 = 2*.5*1/1.5 = 2/3
    np.testing.assert_allclose(jac, [1 / 3, 0.0, 0.5])
    np.testing.assert_allclose(f1, [0.5, 0.0, 2 / 3])


def test_average_precision_hand_values_and_ties():
    prob = np.array([[0.9, 0.8, 0.7, 0.1],     # positives at ranks 1 and 3 -> (1/1 + 2/3) / 2
                     [0.5, 0.5, 0.5, 0.5],     # all tied, 1 positive of 4 -> precision 1/4
                     [0.2, 0.9, 0.9, 0.1],     # tie at the top holds the one positive -> 1/2
                     [0.3, 0.2, 0.1, 0.0]])    # no positive -> 0 by convention
    true = np.array([[1, 0, 1, 0], [0, 0, 1, 0], [0, 1, 0, 0], [0, 0, 0, 0]], bool)
    ap = mm.average_precision_rows(prob, true)
    np.testing.assert_allclose(ap, [(1 + 2 / 3) / 2, 0.25, 0.5, 0.0])


def test_average_precision_matches_sklearn_on_random_rows():
    sklearn = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    prob = np.round(rng.random((50, 30)), 1)  # rounding creates many ties
    true = rng.random((50, 30)) < 0.3
    true[:, 0] = True
    ours = mm.average_precision_rows(prob, true)
    ref = [sklearn.average_precision_score(true[i], prob[i]) for i in range(50)]
    np.testing.assert_allclose(ours, ref, atol=1e-12)


def test_ddi_rate_canonical_pairs():
    adj = np.zeros((4, 4))
    adj[0, 1] = adj[1, 0] = 1
    adj[2, 3] = 1  # one-sided entry counts: A[i,j]=1 or A[j,i]=1
    pred = np.array([[1, 1, 1, 0],   # pairs 01 02 12 -> 1 DDI
                     [0, 0, 1, 1],   # pair 23 -> 1 DDI
                     [1, 0, 0, 0]], bool)  # no pair
    assert mm.ddi_rate(pred, adj) == pytest.approx(2 / 4)
    assert mm.ddi_rate(np.eye(4, dtype=bool), adj) == 0.0  # no pairs at all -> 0


def test_patient_macro_average_and_avg_med():
    prob = np.array([[0.9, 0.1], [0.9, 0.9], [0.1, 0.9]])
    true = np.array([[1, 0], [1, 0], [0, 1]], bool)
    patient = np.array([0, 0, 1])
    res = mm.medrec_scores(prob, true, patient, np.zeros((2, 2)))
    # jaccard per visit 1, 0.5, 1 -> patient means 0.75, 1 -> 0.875 (a visit mean would be 0.8333)
    assert res["jaccard"] == pytest.approx(0.875)
    assert res["avg_med"] == pytest.approx(4 / 3)
    assert res["ddi_rate"] == 0.0
    assert set(res) == set(mm.METRIC_KEYS)


def test_bootstrap_reproduces_published_sampling_and_duplicates():
    samples = mm.bootstrap_samples(10, rounds=3, frac=0.8, seed=0)
    np.random.seed(0)
    expected = [np.random.choice(np.arange(10), 8, replace=True) for _ in range(3)]
    for a, b in zip(samples, expected):
        np.testing.assert_array_equal(a, b)
    patient = np.array([0, 0, 1, 2, 2, 2])
    for (rows, groups), sample in zip(mm.bootstrap_rows(patient, 3, 0.8, 0), mm.bootstrap_samples(3, 3, 0.8, 0)):
        assert len(set(groups)) == len(sample)  # a patient drawn twice is two groups
        np.testing.assert_array_equal(patient[rows], np.repeat(sample, np.bincount(patient)[sample]))


def test_bootstrap_scores_mean_and_std_keys():
    """``<metric>`` / ``<metric>_std`` are the mean and population std of the per-round scores of the published
    samples (each round: the sampled patients' visits, a patient drawn twice counted twice)."""
    rng = np.random.default_rng(1)
    prob = rng.random((40, 6))
    true = rng.random((40, 6)) < 0.4
    patient = np.repeat(np.arange(20), 2)
    adj = (rng.random((6, 6)) < 0.3).astype(float)
    adj = np.maximum(adj, adj.T)
    res = mm.bootstrap_scores(prob, true, patient, adj, rounds=10, seed=0)
    per_round = []
    for sample in mm.bootstrap_samples(20, rounds=10, frac=0.8, seed=0):
        rows = np.concatenate([np.flatnonzero(patient == p) for p in sample])
        groups = np.repeat(np.arange(len(sample)), 2)
        per_round.append(mm.medrec_scores(prob[rows], true[rows], groups, adj))
    assert set(res) == set(mm.METRIC_KEYS) | {f"{k}_std" for k in mm.METRIC_KEYS}
    for k in mm.METRIC_KEYS:
        values = np.array([r[k] for r in per_round])
        assert values.std() > 0, k  # every metric varies across rounds, so the std is really checked
        assert res[k] == pytest.approx(values.mean(), abs=1e-12), k
        assert res[f"{k}_std"] == pytest.approx(values.std(ddof=0), abs=1e-12), k
    assert res == mm.bootstrap_scores(prob, true, patient, adj, rounds=10, seed=0)
    assert res != mm.bootstrap_scores(prob, true, patient, adj, rounds=10, seed=1)


def test_metric_classes_read_datastruct():
    from recbole.evaluator.collector import DataStruct

    prob = np.array([[0.9, 0.6, 0.1]])
    true = np.array([[1, 0, 0]], bool)
    adj = np.array([[0, 1, 0], [1, 0, 0], [0, 0, 0]], float)
    ds = DataStruct()
    for k, v in (("medrec.prob", prob), ("medrec.target", true), ("medrec.patient", np.zeros(1, int)),
                 ("medrec.ddi_adj", adj)):
        ds.set(k, v)
    cfg = {"metric_decimal_place": 4}
    got = {}
    for cls in mm.METRICS:
        got.update(cls(cfg).calculate_metric(ds))
    assert got == {"jaccard": 0.5, "prauc": 1.0, "f1": pytest.approx(0.6667), "ddi_rate": 1.0, "avg_med": 2.0}
    assert mm.DDI_Rate.smaller and not mm.Jaccard.smaller
