"""Per-user significance in the leaderboard: Holm, effect size, bootstrap interval, pairing, and the report."""
from __future__ import annotations

import csv
import math

import numpy as np
import pytest

from recbole_ext.leaderboard import plan, stats, worker
from recbole_ext.leaderboard.report import write_report
from recbole_ext.leaderboard.spec import parse_spec
from tests.test_leaderboard_helpers import FAKE
from tests.test_leaderboard_html import _Tables


def test_holm_against_a_hand_computed_example():
    # sorted: 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 -> 0.02, 0.03, 0.06, 0.04; step-down max -> 0.02, 0.03, 0.06, 0.06
    # (Bonferroni would give 0.04, 0.16, 0.12, 0.02; no correction the raw values)
    assert stats.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02], abs=1e-15)
    assert stats.holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])  # capped at 1
    out = stats.holm([float("nan"), 0.2, 0.01])  # NaN is not a member of the family: m = 2
    assert math.isnan(out[0]) and out[1:] == pytest.approx([0.2, 0.02])
    assert len(stats.holm([])) == 0


def test_effect_size_and_bootstrap_interval(monkeypatch):
    rng = np.random.default_rng(3)
    diff = rng.normal(0.05, 0.2, 400)
    best = rng.normal(0.5, 0.1, 400)
    runs_best = {0: {"users": [f"u{i}" for i in range(400)], "metrics": {"m": (best + diff).tolist()}}}
    runs_other = {0: {"users": [f"u{i}" for i in range(400)], "metrics": {"m": best.tolist()}}}
    test = stats.user_test(runs_best, runs_other, "m", 1)
    assert test.n == 400 and test.mean_diff == pytest.approx(diff.mean())
    assert test.effect == pytest.approx(diff.mean() / diff.std(ddof=1))
    # the percentile interval of the bootstrap mean is close to the normal-theory interval of the mean
    half = 1.96 * diff.std(ddof=1) / math.sqrt(len(diff))
    assert test.ci_low == pytest.approx(diff.mean() - half, abs=0.15 * half)
    assert test.ci_high == pytest.approx(diff.mean() + half, abs=0.15 * half)
    interval = stats.bootstrap_ci(diff)
    assert stats.bootstrap_ci(diff) == interval  # seeded: the same interval every time
    monkeypatch.setattr(stats, "_BOOTSTRAP_CELLS", 1000)  # two resamples per chunk: the same draws, same interval
    assert stats.bootstrap_ci(diff) == interval


def test_users_are_averaged_over_common_seeds_and_paired_by_token():
    best = {0: {"users": ["a", "b", "c"], "metrics": {"m": [1.0, 2.0, 3.0]}},
            1: {"users": ["a", "b"], "metrics": {"m": [3.0, 4.0]}},
            2: {"users": ["a"], "metrics": {"m": [100.0]}}}  # the other model has no seed 2: not averaged in
    other = {0: {"users": ["b", "a", "d"], "metrics": {"m": [0.0, 1.0, 0.0]}},
             1: {"users": ["a", "b", "d"], "metrics": {"m": [0.0, 1.0, 1.0]}}}
    test = stats.user_test(best, other, "m", 1)
    # a: (1 + 3) / 2 - (1 + 0) / 2 = 1.5;  b: (2 + 4) / 2 - (0 + 1) / 2 = 2.5;  c and d are not in both
    assert (test.n, test.seeds) == (2, [0, 1]) and test.mean_diff == pytest.approx(2.0)
    assert stats.user_test(best, {3: other[0]}, "m", 1) is None  # no common seed
    assert stats.user_test(best, other, "other_metric", 1) is None


def _board(tmp_path, monkeypatch, models, seeds=(0, 1, 2)):
    monkeypatch.setenv("RECBOLE_EXT_DATA", str(tmp_path / "data"))
    spec = parse_spec({"task": "medrec", "datasets": ["synth-ehr-small"], "seeds": list(seeds), "models": models,
                       "config": {"fake_users": 200, "fake_user_noise": 0.2}}, "per-user")
    requests = plan.tuning_runs(spec, {"synth-ehr-small": plan.DatasetHashes(None, None)}, FAKE)
    rows = [worker.execute(r.to_payload()) for r in requests]  # in-process: this test is about the statistics
    return spec, requests, rows


def _report(tmp_path, spec, requests, rows):
    chosen = stats.choose_configs(requests, rows)
    [table] = stats.build_tables(spec.datasets, [m.name for m in spec.models], requests, rows, chosen)
    chosen_keys = {r.run_key for r in requests if chosen.get((r.model, r.dataset)) == r.grid_point}
    write_report(tmp_path / "out", "per-user", spec.task, [table], rows, chosen_keys)
    with open(tmp_path / "out" / "leaderboard.csv") as fh:
        csv_rows = {(r["model"], r["metric"]): r for r in csv.DictReader(fh)}
    return table, csv_rows


def test_a_planted_difference_is_significant_per_user_and_a_null_one_is_not(tmp_path, monkeypatch):
    """A and C have the same level; B is 0.05 Jaccard below them, each user 200 with noise sd 0.2 per run."""
    spec, requests, rows = _board(tmp_path, monkeypatch, [{"name": "A", "config": {"fake_quality": 0.35}},
                                                          {"name": "B", "config": {"fake_quality": 0.30}},
                                                          {"name": "C", "config": {"fake_quality": 0.35}}])
    assert all(len(r["per_user_test"]["users"]) == 200 for r in rows)
    table, csv_rows = _report(tmp_path, spec, requests, rows)
    best = table.best["jaccard"]
    null = ({"A", "C"} - {best}).pop()
    assert best in ("A", "C")
    planted, same = table.user_tests[("B", "jaccard")], table.user_tests[(null, "jaccard")]
    assert planted.n == 200 and planted.seeds == [0, 1, 2]
    assert planted.t_p_holm < 0.01 and planted.wilcoxon_p_holm < 0.01
    assert 0 < planted.ci_low < 0.05 < planted.ci_high and planted.effect > 0.2
    assert same.t_p_holm > 0.05 and same.wilcoxon_p_holm > 0.05 and same.ci_low < 0 < same.ci_high
    # three seeds: the seed-level Wilcoxon cannot go below 1/8, whatever the difference
    assert table.tests[("B", "jaccard")].wilcoxon_p >= 0.125
    # Holm's family: every per-user comparison of the table, 2 models x 4 metrics with a direction (not avg_med)
    assert len(table.user_tests) == 8 and ("B", "avg_med") not in table.user_tests
    assert all(t.t_p_holm >= t.t_p and t.wilcoxon_p_holm >= t.wilcoxon_p for t in table.user_tests.values())
    raw = [t.t_p for t in table.user_tests.values()]
    assert planted.t_p_holm == pytest.approx(stats.holm(raw)[list(table.user_tests).index(("B", "jaccard"))])

    row = csv_rows[("B", "jaccard")]
    assert row["n_users"] == "200" and row["user_seeds"] == "0 1 2" and float(row["user_t_p_holm"]) < 0.01
    assert float(row["user_wilcoxon_p_holm"]) < 0.01 and float(row["user_diff_ci_low"]) > 0
    assert float(csv_rows[(null, "jaccard")]["user_t_p_holm"]) > 0.05
    assert csv_rows[(best, "jaccard")]["user_t_p_holm"] == ""  # the best is not compared with itself
    md = (tmp_path / "out" / "leaderboard.md").read_text()
    assert "Holm over all per-user comparisons" in md and "8 per-user comparisons in the Holm family" in md
    line = next(x for x in md.splitlines() if x.startswith("| B | jaccard |"))
    assert "<0.001 / <0.001" in line and f"| 200 | {planted.mean_diff:+.4f} [" in line
    page = (tmp_path / "out" / "leaderboard.html").read_text()
    assert "the unit is the test user" in page
    parsed = _Tables()
    parsed.feed(page)
    heads = [h for h, _ in parsed.headers["tests-0"]]
    tests = {(cells[0], cells[1]): dict(zip(heads, cells)) for _, cells in parsed.tables["tests-0"]}
    assert len(tests) == 8 and all(len(cells) == len(heads) for _, cells in parsed.tables["tests-0"])
    assert tests[("B", "jaccard")]["p t (Holm)"] == "<0.001" and tests[("B", "jaccard")]["users"] == "200"
    assert tests[("B", "jaccard")]["d_z"] == f"{planted.effect:.2f}"
    summary_heads = [h for h, _ in parsed.headers["summary-0"]]
    b_row = next(cells for _, cells in parsed.tables["summary-0"] if cells[0] == "B")
    assert b_row[summary_heads.index("jaccard ↑") + 1] == "<0.001 / <0.001"  # the column after the metric


def test_runs_without_per_user_values_fall_back_to_n_a(tmp_path, monkeypatch):
    spec, requests, rows = _board(tmp_path, monkeypatch, [{"name": "A", "config": {"fake_quality": 0.35}},
                                                          {"name": "B", "config": {"fake_quality": 0.30}},
                                                          {"name": "C", "config": {"fake_quality": 0.20}}],
                                  seeds=(0, 1))
    for r in rows:
        if r["model"] == "B":
            r["per_user_test"] = None        # a run function that records none
        elif r["model"] == "C":
            r.pop("per_user_test")           # a row from before the column existed
    table, csv_rows = _report(tmp_path, spec, requests, rows)
    assert table.best["jaccard"] == "A" and not table.user_tests  # nothing to pair with
    assert ("B", "jaccard") in table.tests  # the seed-level tests are still there
    assert csv_rows[("B", "jaccard")]["user_t_p_holm"] == "" and csv_rows[("B", "jaccard")]["t_p_vs_best"] != ""
    md = (tmp_path / "out" / "leaderboard.md").read_text()
    line = next(x for x in md.splitlines() if x.startswith("| B | jaccard |"))
    assert line.count("n/a") == 4  # users, interval, d_z, per-user p; the per-seed p is shown
