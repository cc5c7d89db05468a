"""Medication-set metrics (SafeDrug / CausalMed protocol, spec cafemed.md §5.1) and their bootstrap.

Inputs per evaluated visit: predicted probabilities ``prob`` [N, n_med], the 0/1 target [N, n_med] and the patient
group of each visit [N]. The predicted set is ``{m : prob_m >= threshold}`` (0.5).

* ``jaccard``, ``f1``, ``prauc``: computed per visit, averaged within each patient, then over patients.
  F1 = 2PR/(P+R) with P = 0 for an empty predicted set and F1 = 0 when P+R = 0; Jaccard = 0 for an empty union;
  PRAUC = average precision over the visit's labels (sklearn's definition, ties grouped), 0 for a visit without
  positive labels.
* ``ddi_rate``: over all predicted sets, (# unordered pairs i<j with A[i,j]=1) / (# unordered pairs); 0 if no pairs.
* ``avg_med``: total predicted medications / number of visits.

RecBole integration: the classes in ``METRICS`` read ``medrec.prob``, ``medrec.target``, ``medrec.patient`` and
``medrec.ddi_adj`` from a ``DataStruct`` (filled by ``MedRecTrainer``). They declare ``EvaluatorType.RANKING`` so
RecBole's Config accepts them in ``metrics:`` / ``valid_metric:``; names are lower-cased class names.
"""
from __future__ import annotations

import numpy as np
from recbole.evaluator.base_metric import AbstractMetric
from recbole.utils import EvaluatorType

from recbole_ext.options import config_value
from recbole_ext.utils.segments import concatenated_ranges, indptr_from_segment_ids

THRESHOLD = 0.5
METRIC_KEYS = ("jaccard", "prauc", "f1", "ddi_rate", "avg_med")


def _patient_means(values: np.ndarray, patient: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted patient groups and each one's mean over its visits."""
    groups, inv = np.unique(patient, return_inverse=True)
    sums = np.bincount(inv, weights=values, minlength=len(groups))
    counts = np.bincount(inv, minlength=len(groups))
    return groups, sums / counts


def _per_patient_mean(values: np.ndarray, patient: np.ndarray) -> float:
    """Mean over patients of each patient's mean over visits."""
    if len(values) == 0:
        return 0.0
    return float(np.mean(_patient_means(values, patient)[1]))


def set_scores(pred: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-visit Jaccard and F1 of boolean predicted sets vs boolean targets."""
    pred = pred.astype(bool)
    target = target.astype(bool)
    inter = (pred & target).sum(1).astype(np.float64)
    union = (pred | target).sum(1).astype(np.float64)
    n_pred = pred.sum(1).astype(np.float64)
    n_true = target.sum(1).astype(np.float64)
    jac = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
    prec = np.divide(inter, n_pred, out=np.zeros_like(inter), where=n_pred > 0)
    rec = np.divide(inter, n_true, out=np.zeros_like(inter), where=n_true > 0)
    denom = prec + rec
    f1 = np.divide(2 * prec * rec, denom, out=np.zeros_like(inter), where=denom > 0)
    return jac, f1


def average_precision_rows(prob: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Average precision of each row (sklearn ``average_precision_score`` per row, ties grouped), vectorised."""
    prob = np.asarray(prob, dtype=np.float64)
    target = np.asarray(target).astype(bool)
    n, m = prob.shape
    if n == 0:
        return np.zeros(0)
    order = np.argsort(-prob, axis=1, kind="stable")
    s = np.take_along_axis(prob, order, axis=1)
    t = np.take_along_axis(target, order, axis=1)
    # a tie group is scored at its last position: precision counts every positive in the group
    group_end = np.ones((n, m), dtype=bool)
    group_end[:, :-1] = s[:, :-1] != s[:, 1:]
    pos = np.where(group_end, np.arange(m)[None, :], m)
    end_idx = np.minimum.accumulate(pos[:, ::-1], axis=1)[:, ::-1]
    cum_tp = np.cumsum(t, axis=1)
    prec_at_end = np.take_along_axis(cum_tp, end_idx, axis=1) / (end_idx + 1.0)
    n_pos = t.sum(1)
    total = (prec_at_end * t).sum(1)
    return np.divide(total, n_pos, out=np.zeros(n), where=n_pos > 0)


def ddi_pairs_per_visit(pred: np.ndarray, ddi_adj: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(# interacting pairs, # pairs) of each predicted set [N, n_med] under a symmetric 0/1 adjacency."""
    y = pred.astype(np.float64)
    adj = ((np.asarray(ddi_adj) + np.asarray(ddi_adj).T) > 0).astype(np.float64)
    np.fill_diagonal(adj, 0.0)
    k = y.sum(1)
    return ((y @ adj) * y).sum(1) / 2, k * (k - 1) / 2


def ddi_rate(pred: np.ndarray, ddi_adj: np.ndarray) -> float:
    """Canonical DDI rate of boolean predicted sets [N, n_med] under a symmetric 0/1 adjacency."""
    bad, pairs = ddi_pairs_per_visit(pred, ddi_adj)
    all_pairs = float(pairs.sum())
    if all_pairs == 0:
        return 0.0
    return float(bad.sum()) / all_pairs


def medrec_scores(prob: np.ndarray, target: np.ndarray, patient: np.ndarray, ddi_adj: np.ndarray,
                  threshold: float = THRESHOLD, which: tuple[str, ...] = METRIC_KEYS) -> dict[str, float]:
    """All metrics of one evaluated sample."""
    prob = np.asarray(prob)
    target = np.asarray(target).astype(bool)
    pred = prob >= threshold
    out: dict[str, float] = {}
    if "jaccard" in which or "f1" in which:
        jac, f1 = set_scores(pred, target)
        out["jaccard"] = _per_patient_mean(jac, patient)
        out["f1"] = _per_patient_mean(f1, patient)
    if "prauc" in which:
        out["prauc"] = _per_patient_mean(average_precision_rows(prob, target), patient)
    if "ddi_rate" in which:
        out["ddi_rate"] = ddi_rate(pred, ddi_adj)
    if "avg_med" in which:
        out["avg_med"] = float(pred.sum() / len(pred)) if len(pred) else 0.0
    return {k: out[k] for k in which if k in out}


def per_patient_scores(prob: np.ndarray, target: np.ndarray, patient: np.ndarray, ddi_adj: np.ndarray,
                       threshold: float = THRESHOLD, which: tuple[str, ...] = METRIC_KEYS
                       ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Sorted patient groups and each metric per patient, for tests with patients as the unit.

    ``jaccard``, ``f1``, ``prauc``: the patient's mean over its visits, exactly the terms ``medrec_scores`` averages,
    so their mean over patients IS the reported value. The two pooled metrics are ratios over visits, so their
    per-patient values average to the reported value only with weights: ``ddi_rate`` is the ratio over the patient's
    own predicted pairs (0 without pairs, as the metric) and the reported rate is their mean weighted by each
    patient's number of predicted pairs; ``avg_med`` is the patient's mean set size and the reported value is their
    mean weighted by visits.
    """
    prob = np.asarray(prob)
    target = np.asarray(target).astype(bool)
    patient = np.asarray(patient)
    pred = prob >= threshold
    groups = np.unique(patient)
    out: dict[str, np.ndarray] = {}
    if "jaccard" in which or "f1" in which:
        jac, f1 = set_scores(pred, target)
        out["jaccard"] = _patient_means(jac, patient)[1]
        out["f1"] = _patient_means(f1, patient)[1]
    if "prauc" in which:
        out["prauc"] = _patient_means(average_precision_rows(prob, target), patient)[1]
    if "ddi_rate" in which:
        bad, pairs = ddi_pairs_per_visit(pred, ddi_adj)
        _, inv = np.unique(patient, return_inverse=True)
        bad_p = np.bincount(inv, weights=bad, minlength=len(groups))
        pairs_p = np.bincount(inv, weights=pairs, minlength=len(groups))
        out["ddi_rate"] = np.divide(bad_p, pairs_p, out=np.zeros(len(groups)), where=pairs_p > 0)
    if "avg_med" in which:
        out["avg_med"] = _patient_means(pred.sum(1).astype(np.float64), patient)[1]
    return groups, {k: out[k] for k in which if k in out}


def bootstrap_samples(n_patients: int, rounds: int = 10, frac: float = 0.8, seed: int = 0) -> list[np.ndarray]:
    """Patient index samples drawn with replacement, as ``np.random.seed(seed); np.random.choice(...)`` would."""
    rng = np.random.RandomState(seed)
    size = int(round(frac * n_patients))
    return [rng.choice(np.arange(n_patients), size, replace=True) for _ in range(rounds)]


def bootstrap_rows(patient: np.ndarray, rounds: int = 10, frac: float = 0.8, seed: int = 0):
    """Yield ``(rows, groups)`` per bootstrap round: the visit rows of the sampled patients and their group ids.

    ``patient`` holds 0..n_patients-1 per visit; a patient drawn twice contributes its visits twice, as two groups.
    """
    patient = np.asarray(patient, dtype=np.int64)
    n_pat = int(patient.max()) + 1 if len(patient) else 0
    order = np.argsort(patient, kind="stable")
    ptr = indptr_from_segment_ids(patient, n_pat)
    for sample in bootstrap_samples(n_pat, rounds, frac, seed):
        lens = ptr[sample + 1] - ptr[sample]
        yield order[concatenated_ranges(ptr[sample], lens)], np.repeat(np.arange(len(sample)), lens)


def summarise_rounds(rounds: list[dict]) -> dict[str, float]:
    """``<metric>`` = mean and ``<metric>_std`` = population std (numpy default, as published) over rounds."""
    out: dict[str, float] = {}
    for key in rounds[0] if rounds else []:
        vals = np.array([r[key] for r in rounds], dtype=np.float64)
        out[key] = float(vals.mean())
        out[f"{key}_std"] = float(vals.std())
    return out


def bootstrap_scores(prob: np.ndarray, target: np.ndarray, patient: np.ndarray, ddi_adj: np.ndarray,
                     rounds: int = 10, frac: float = 0.8, seed: int = 0, threshold: float = THRESHOLD,
                     which: tuple[str, ...] = METRIC_KEYS) -> dict[str, float]:
    """Bootstrap mean and std of every metric (see ``bootstrap_rows``)."""
    return summarise_rounds([medrec_scores(prob[rows], target[rows], groups, ddi_adj, threshold, which)
                             for rows, groups in bootstrap_rows(patient, rounds, frac, seed)])


class _MedRecMetric(AbstractMetric):
    metric_type = EvaluatorType.RANKING
    metric_need = ["medrec.prob", "medrec.target", "medrec.patient", "medrec.ddi_adj"]
    key = ""

    def __init__(self, config):
        super().__init__(config)
        self.threshold = float(config_value(config, "medrec_threshold", THRESHOLD))

    def calculate_metric(self, dataobject):
        get = dataobject.get
        prob, target = get("medrec.prob"), get("medrec.target")
        patient, adj = get("medrec.patient"), get("medrec.ddi_adj")
        to_np = (lambda x: x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x))
        res = medrec_scores(to_np(prob), to_np(target), to_np(patient), to_np(adj), self.threshold, (self.key,))
        return {self.key: round(res[self.key], self.decimal_place)}


class Jaccard(_MedRecMetric):
    """Jaccard of the predicted medication set (threshold 0.5), patient-level macro average."""

    key = "jaccard"


class PRAUC(_MedRecMetric):
    """Per-visit average precision over the medication labels, patient-level macro average."""

    key = "prauc"


class F1(_MedRecMetric):
    """Per-visit F1 of the predicted medication set, patient-level macro average."""

    key = "f1"


class DDI_Rate(_MedRecMetric):
    """Share of predicted medication pairs that are known drug-drug interactions (lower is safer)."""

    key = "ddi_rate"
    smaller = True


class Avg_Med(_MedRecMetric):
    """Average number of predicted medications per visit (descriptive; neither larger nor smaller is better)."""

    key = "avg_med"
    descriptive = True  # no direction is better (RecBole knows only `smaller`); `run.py list metrics` says so


METRICS = [Jaccard, PRAUC, F1, DDI_Rate, Avg_Med]
