"""Per-user (per-patient) values of the test metrics, so models can be compared with users as the unit.

A run's test metrics are means over evaluated users (patients). Significance over a handful of seeds is weak (three
seeds: a one-sided Wilcoxon p is never below 0.125); the users behind each mean are a far larger paired sample.
``evaluate_per_user(trainer, test_data, dataset)`` runs one ``trainer.evaluate`` and keeps, for every evaluated
user, the value of every metric that is a mean over users, in the order evaluated::

    {"users": [token, ...], "metrics": {"recall@10": [value, ...], ...}}

* RecBole trainers (RecBole's own, ``MMRecTrainer``, the FAISS mixin): each configured top-K metric computed from
  the collector's ``rec.topk`` rows (Recall, NDCG, Precision, MAP, Hit, MRR) hands its per-row matrix
  [n_rows, max_k] to ``topk_result``, which reports the column means; that matrix is kept. Rows are mapped to users
  by recording the user id of each score row as the trainer's batch function (full-sort or sampled) returns it.
  Metrics that are not means over users (ItemCoverage, GiniIndex, AUC, ...) are absent.
* ``MedRecTrainer``: the visit probabilities of ``predict_split`` on the whole test split (no bootstrap) go through
  ``medrec_metrics.per_patient_scores``.

Nothing here changes what ``evaluate`` returns; the wrappers live on the trainer only during that one call.
"""
from __future__ import annotations

import contextlib
import math
from logging import getLogger

import numpy as np

from recbole_ext.utils import distributed

_MISSING = object()


def _per_user_metrics(evaluator) -> dict:
    """The configured metrics that are means over users of ``rec.topk`` rows (Recall, NDCG, ..., not the
    ``rec.items`` ones such as ItemCoverage or GiniIndex, nor AUC)."""
    from recbole.evaluator.base_metric import TopkMetric

    return {name: metric for name, metric in evaluator.metric_class.items()
            if isinstance(metric, TopkMetric) and list(metric.metric_need) == ["rec.topk"]}


def _agrees(values: dict[str, np.ndarray], result, decimals: int) -> dict[str, np.ndarray]:
    """Keep only metrics whose per-user mean rounds to the reported value: a custom metric class whose
    ``calculate_metric`` does not average its ``metric_info`` rows must not be tested as if it did."""
    kept = {}
    for key, column in values.items():
        reported = (result or {}).get(key)
        if reported is None or not len(column):
            continue
        if math.isclose(float(column.mean()), float(reported), rel_tol=0, abs_tol=0.5 * 10.0 ** -decimals + 1e-12):
            kept[key] = column
        else:
            getLogger().warning(f"per-user values of {key} do not average to the reported {reported}; left out")
    return kept


@contextlib.contextmanager
def _wrapped(obj, name: str, wrapper):
    """Replace ``obj.name`` on the instance for the block (RecBole looks the batch functions up on ``self``)."""
    own = vars(obj).get(name, _MISSING)  # an instance attribute already there (another wrapper) is put back
    setattr(obj, name, wrapper(getattr(obj, name)))
    try:
        yield
    finally:
        if own is _MISSING:
            delattr(obj, name)
        else:
            setattr(obj, name, own)


def _recbole(trainer, dataset, eval_data, kwargs) -> tuple:
    import torch

    uid_field = trainer.config["USER_ID_FIELD"]
    rows: list = []   # user ids of each batch's score rows, in the order the collector receives them
    seen: dict = {}

    def full_sort(original):
        def batch_eval(batched_data):
            interaction, scores, positive_u, positive_i = original(batched_data)
            users = interaction[uid_field]
            # one score row per user row; anything else (a model returning its own layout) is not mapped
            rows.append(users.cpu().long() if len(users) == scores.shape[0] else None)
            return interaction, scores, positive_u, positive_i
        return batch_eval

    def neg_sample(original):
        def batch_eval(batched_data):
            interaction, scores, positive_u, positive_i = original(batched_data)
            row_idx = batched_data[1]
            if scores.dim() == 2 and row_idx is not None:  # ranking: row_idx maps candidates to score rows
                users = torch.full((scores.shape[0],), -1, dtype=torch.long)
                users[row_idx.cpu()] = interaction[uid_field].cpu().long()
                rows.append(users)
            else:
                rows.append(None)
            return interaction, scores, positive_u, positive_i
        return batch_eval

    def keep(cutoffs):
        # TopkMetric.topk_result(name, value) receives the [n_rows, max_k] matrix whose column means RecBole
        # reports: keeping that very matrix makes the per-user values the terms of the reported means.
        def wrap(original):
            def topk_result(name, value):
                seen.update({f"{name}@{k}": np.asarray(value[:, k - 1], dtype=np.float64) for k in cutoffs})
                return original(name, value)
            return topk_result
        return wrap

    with contextlib.ExitStack() as stack:
        stack.enter_context(_wrapped(trainer, "_full_sort_batch_eval", full_sort))
        stack.enter_context(_wrapped(trainer, "_neg_sample_batch_eval", neg_sample))
        for metric in _per_user_metrics(trainer.evaluator).values():
            stack.enter_context(_wrapped(metric, "topk_result", keep(metric.topk)))
        result = trainer.evaluate(eval_data, **kwargs)
    # a data-parallel evaluation scored a block of the batches here; the metrics saw every block, in rank order
    rows = [r for part in distributed.all_gather_objects(rows, "gathering per-user rows") for r in part]
    if not seen or not rows or any(r is None for r in rows):
        return result, {}
    users = torch.cat(rows).numpy()
    if (users < 0).any() or any(len(v) != len(users) for v in seen.values()):
        return result, {}
    values = _agrees(seen, result, int(trainer.config["metric_decimal_place"] or 4))
    if not values:
        return result, {}
    tokens = np.asarray(dataset.id2token(uid_field, users)).tolist()
    return result, {"users": [str(t) for t in tokens], "metrics": {k: v.tolist() for k, v in values.items()}}


def _medrec(trainer, eval_data, kwargs) -> tuple:
    from recbole_ext.evaluation.medrec_metrics import per_patient_scores

    seen: dict = {}

    def predict(original):
        def run(data, *args, **kw):
            prob, target, patient = original(data, *args, **kw)
            seen.update(data=data, prob=prob, target=target, patient=patient)
            return prob, target, patient
        return run

    with _wrapped(trainer, "predict_split", predict):
        result = trainer.evaluate(eval_data, **kwargs)
    if "prob" not in seen or not len(seen["prob"]):
        return result, {}
    data = seen["data"]
    groups, values = per_patient_scores(seen["prob"], seen["target"], seen["patient"], data.dataset.ddi_adj.numpy(),
                                        trainer.threshold, tuple(trainer.evaluator.metrics))
    # VisitBatch.patient_ids index the phase's patient list, which indexes the dataset's patients
    tokens = data.dataset.data.patient_tokens[data.dataset.split_patients(data.phase)[groups]]
    return result, {"users": [str(t) for t in tokens.tolist()],
                    "metrics": {k: v.tolist() for k, v in values.items()}}


def evaluate_per_user(trainer, eval_data, dataset, **kwargs) -> tuple:
    """``(trainer.evaluate(eval_data, **kwargs), per_user)``: the result unchanged, and the per-user values of
    that same evaluation (``{}`` when it has none, e.g. only AUC, or a layout this module cannot map to users)."""
    if hasattr(trainer, "predict_split"):  # MedRecTrainer: patients, not RecBole's collector
        return _medrec(trainer, eval_data, kwargs)
    return _recbole(trainer, dataset, eval_data, kwargs)
