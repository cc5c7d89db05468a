"""Selection on validation, aggregation over seeds, and paired significance tests.

* Selection: per (model, dataset), the grid point with the best mean validation score over the tuning seeds; a grid
  point with a failed run is not eligible. Test numbers are never looked at here.
* Aggregation: mean and sample standard deviation (ddof=1) of each test metric over the seeds of the chosen point.
* Tests: for each metric with a known direction, the best model (by mean) against every other model, paired by seed,
  one-sided in the metric's direction: Student's paired t-test and the Wilcoxon signed-rank test (scipy).
"""
from __future__ import annotations

import math
import re
import warnings
from dataclasses import dataclass, field

import numpy as np

HIGHER_IS_BETTER = ("recall", "ndcg", "jaccard", "f1", "prauc", "precision", "map", "hit", "mrr", "auc",
                    "itemcoverage")
LOWER_IS_BETTER = ("ddi", "ddi_rate", "ddirate")


def metric_direction(name: str) -> int:
    """+1 higher is better, -1 lower is better, 0 no preferred direction (e.g. average number of drugs)."""
    base = re.split(r"[@_]", name.lower(), maxsplit=1)[0] if not name.lower().startswith("ddi") else "ddi"
    if base in LOWER_IS_BETTER:
        return -1
    if base in HIGHER_IS_BETTER:
        return 1
    return 0


def metric_sort_key(name: str):
    """Group metrics by family, then by cut-off: recall@10, recall@20, ndcg@10, ..."""
    base, _, k = name.partition("@")
    families = ["jaccard", "prauc", "f1", "precision", "recall", "ndcg", "map", "mrr", "hit", "ddi_rate", "avg_med"]
    family = families.index(base) if base in families else len(families)
    return (family, base, int(k) if k.isdigit() else 0)


def choose_configs(requests, rows) -> dict:
    """{(model, dataset): grid_point} from validation scores of the tuning runs."""
    by_key = {r["run_key"]: r for r in rows}
    groups: dict = {}
    for req in requests:
        groups.setdefault((req.model, req.dataset), {}).setdefault(req.grid_id, (req.grid_point, []))[1].append(
            by_key.get(req.run_key))
    chosen = {}
    for group, points in groups.items():
        best = None
        for grid_id, (point, point_rows) in points.items():  # plan order: ties keep the first point
            if any(r is None or r["status"] != "ok" for r in point_rows):
                continue
            sign = 1 if point_rows[0].get("valid_bigger", 1) else -1
            score = sign * float(np.mean([r["best_valid_score"] for r in point_rows]))
            if best is None or score > best[0]:
                best = (score, point)
        if best is not None:
            chosen[group] = best[1]
    return chosen


@dataclass
class Cell:
    values: dict  # seed -> value
    mean: float
    std: float
    best: bool = False

    @property
    def n(self) -> int:
        return len(self.values)


@dataclass
class PairedTest:
    t_p: float
    wilcoxon_p: float
    n: int


@dataclass
class DatasetTable:
    dataset: str
    metrics: list
    models: list                          # in spec order; models with no finished chosen run are listed as missing
    cells: dict = field(default_factory=dict)   # (model, metric) -> Cell
    best: dict = field(default_factory=dict)    # metric -> model
    tests: dict = field(default_factory=dict)   # (model, metric) -> PairedTest against best[metric]
    chosen: dict = field(default_factory=dict)  # model -> grid point
    failed: dict = field(default_factory=dict)  # model -> number of failed runs of the chosen point
    history: dict = field(default_factory=dict)  # model -> list of histories (one per seed)
    valid_metric: str | None = None              # the validation metric of the runs (for training curves)


def _one_sided(test, best, other, direction):
    alternative = "greater" if direction > 0 else "less"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            p = float(test(best, other, alternative=alternative).pvalue)
    except ValueError:  # e.g. Wilcoxon with every difference zero
        p = float("nan")
    return p


def paired_test(best: dict, other: dict, direction: int) -> PairedTest:
    from scipy import stats as sps

    seeds = sorted(set(best) & set(other))
    a = np.array([best[s] for s in seeds], dtype=float)
    b = np.array([other[s] for s in seeds], dtype=float)
    if len(seeds) < 2 or direction == 0:
        return PairedTest(float("nan"), float("nan"), len(seeds))
    if np.allclose(a - b, 0):
        return PairedTest(1.0, 1.0, len(seeds))
    return PairedTest(_one_sided(sps.ttest_rel, a, b, direction), _one_sided(sps.wilcoxon, a, b, direction),
                      len(seeds))


def build_tables(datasets, models, requests, rows, chosen, metrics=None) -> list[DatasetTable]:
    """``models``: a list of names, or a mapping dataset -> names (boards where models differ per dataset)."""
    by_key = {r["run_key"]: r for r in rows}
    tables = []
    all_models = models
    for dataset in datasets:
        models = all_models[dataset] if isinstance(all_models, dict) else all_models
        chosen_rows: dict = {}  # the chosen point's runs; every run of a model that has no chosen point
        for req in requests:
            point = chosen.get((req.model, dataset))
            if req.dataset != dataset or (point is not None and point != req.grid_point):
                continue
            row = by_key.get(req.run_key)
            if row is not None:
                chosen_rows.setdefault(req.model, []).append(row)
        reported = {k for rs in chosen_rows.values() for r in rs if r["status"] == "ok" for k in (r["test_result"] or {})
                    if not k.endswith("_std")}
        # the spec's columns that this dataset reports (a mixed board lists metrics of several tasks)
        names = [m for m in metrics if m in reported] if metrics else sorted(reported, key=metric_sort_key)
        table = DatasetTable(dataset, list(names), list(models))
        for model in models:
            model_rows = chosen_rows.get(model, [])
            table.failed[model] = sum(r["status"] != "ok" for r in model_rows)
            # no chosen point: its ok runs belong to different points and must not be averaged together
            ok = [r for r in model_rows if r["status"] == "ok"] if (model, dataset) in chosen else []
            if (model, dataset) in chosen:
                table.chosen[model] = chosen[(model, dataset)]
            table.history[model] = [r["history"] for r in ok if r.get("history")]
            table.valid_metric = table.valid_metric or next((r["valid_metric"] for r in ok if r.get("valid_metric")),
                                                            None)
            for metric in names:
                values = {r["seed"]: float(r["test_result"][metric]) for r in ok
                          if (r["test_result"] or {}).get(metric) is not None}
                if values:
                    arr = np.array(list(values.values()))
                    std = float(arr.std(ddof=1)) if len(arr) > 1 else float("nan")
                    table.cells[(model, metric)] = Cell(values, float(arr.mean()), std)
        for metric in names:
            direction = metric_direction(metric)
            present = [m for m in models if (m, metric) in table.cells]
            if direction == 0 or not present:
                continue
            best = max(present, key=lambda m: direction * table.cells[(m, metric)].mean)
            table.best[metric] = best
            for m in present:
                if len(present) > 1 and math.isclose(table.cells[(m, metric)].mean, table.cells[(best, metric)].mean, rel_tol=0,
                                abs_tol=1e-12):
                    table.cells[(m, metric)].best = True
                if m != best:
                    table.tests[(m, metric)] = paired_test(table.cells[(best, metric)].values,
                                                           table.cells[(m, metric)].values, direction)
        tables.append(table)
    return tables
