"""Leaderboard: spec validation, run identity, selection on validation, statistics, store and outputs."""
from __future__ import annotations

import csv
import json
import math
import re

import numpy as np
import pytest

from recbole_ext.errors import UserError
from recbole_ext.leaderboard import cli, plan, stats
from recbole_ext.leaderboard.spec import load_spec, parse_spec
from recbole_ext.leaderboard.store import ResultStore
from recbole_ext.utils.hashing import dir_sha256
from tests.test_leaderboard_helpers import FAKE, REPO, write_spec

BASE = {"task": "mmrec", "datasets": ["synth-mm"], "seeds": [0, 1], "models": ["BPR"]}


@pytest.mark.parametrize("change, message", [
    ({"colour": 1}, "unknown key(s) ['colour']"),
    ({"task": "ranking"}, "task 'ranking' is not one of"),
    ({"datasets": []}, "'datasets' must be a non-empty list"),
    ({"datasets": ["a", "a"]}, "repeats a name"),
    ({"seeds": 0}, "'seeds' must be at least 1"),
    ({"seeds": [0, "1"]}, "holds '1', not an integer from 0 to 2**32 - 1"),
    ({"seeds": [0, 2**32]}, "holds 4294967296, not an integer from 0 to 2**32 - 1"),
    ({"seeds": [1, 1]}, "repeats a seed"),
    ({"seeds": True}, "'seeds' must be a list of integers or a count"),
    ({"tuning_seeds": 3}, "'tuning_seeds' must be an integer from 1 to 2"),
    ({"models": []}, "'models' must be a non-empty list"),
    ({"models": ["BPR", "BPR"]}, "repeats a model name"),
    ({"models": [{"name": "BPR", "grid": {}}]}, "has an empty grid"),
    ({"models": [{"name": "BPR", "grid": {"learning_rate": []}}]}, "grid.learning_rate is an empty list"),
    ({"models": [{"name": "BPR", "grid": {"learning_rate": 0.1}}]}, "must be a list of values, got float"),
    ({"models": [{"name": "BPR", "grid": {"seed": [1, 2]}}]}, "grid sets 'seed'"),
    ({"models": [{"name": "BPR", "grid": {"n": [1, 1]}}]}, "repeats a value"),
    ({"models": [{"name": "BPR", "lr": 1}]}, "unknown key(s) ['lr'] in models[0]"),
    ({"models": [{"grid": {"n": [1]}}]}, "models[0] has no 'name'"),
    ({"models": [{"name": "BPR", "config": {"n": 1}, "grid": {"n": [2]}}]}, "both in config and in grid"),
    ({"models": [3]}, "must be a model name or a mapping, got int"),
    ({"config": {"seed": 3}}, "which the leaderboard sets per run"),
    ({"config": [1]}, "'config' must be a mapping, got list"),
    ({"dataset_config": {"other": {"x": 1}}}, "dataset_config names ['other']"),
    ({"metrics": "recall@10"}, None),  # a single name is accepted
])
def test_spec_validation(change, message):
    data = {**BASE, **change}
    if message is None:
        assert parse_spec(data, "s.yaml").metrics == ("recall@10",)
        return
    with pytest.raises(UserError) as err:
        parse_spec(data, "s.yaml")
    assert message in str(err.value) and "s.yaml" in str(err.value)
    assert "\n" not in err.value.one_line()


def test_spec_missing_key_and_bad_yaml(tmp_path):
    with pytest.raises(UserError, match="missing required key 'seeds'"):
        parse_spec({k: v for k, v in BASE.items() if k != "seeds"}, "s.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("task: [mmrec\n")
    with pytest.raises(UserError, match="is not valid YAML"):
        load_spec(bad)
    with pytest.raises(UserError, match="does not exist"):
        load_spec(tmp_path / "none.yaml")
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(UserError, match="must hold a mapping"):
        load_spec(bad)


def test_shipped_specs_are_valid():
    specs = {p.stem: load_spec(p) for p in (REPO / "leaderboards").glob("*.yaml")}
    assert {"multimodal", "medrec", "quick"} <= set(specs)
    mm, med = specs["multimodal"], specs["medrec"]
    assert set(mm.datasets) == {"baby", "sports", "clothing"} and len(mm.seeds) == 5
    assert {m.name for m in mm.models} == {"BPR", "LightGCN", "VBPR", "FREEDOM", "LATTICE", "MGCN", "LGMRec", "BM3",
                                          "DRAGON", "MENTOR", "MambaRec"}
    assert set(med.datasets) == {"mimic3", "mimic4"} and len(med.seeds) == 5
    assert {m.name for m in med.models} == {"CafeMed", "RETAIN", "GAMENet", "SafeDrug", "MoleRec", "MedFM", "MedDeepFM",
                                           "MedWideDeep"}


def test_grid_points_follow_the_key_names_not_the_spec_order():
    # the plan order breaks ties between equally scored points, so it stays that of every board run so far
    spec = parse_spec({**BASE, "models": [{"name": "BPR", "grid": {"reg_weight": [1, 2], "learning_rate": [3, 4]}}]},
                      "s")
    points = [(p["learning_rate"], p["reg_weight"]) for p in spec.models[0].grid_points()]
    assert points == [(3, 1), (3, 2), (4, 1), (4, 2)]  # learning_rate outermost, as sorted; the spec lists it last
    assert parse_spec(BASE, "s").models[0].grid_points() == [{}]


def test_run_keys_are_content_defined(tmp_path, monkeypatch):
    monkeypatch.setenv("RECBOLE_EXT_DATA", str(tmp_path))
    spec = parse_spec({**BASE, "models": [{"name": "BPR", "grid": {"lr": [1, 2]}}], "tuning_seeds": 1}, "s")
    none = {"synth-mm": plan.dataset_hashes("synth-mm")}
    assert none["synth-mm"] == plan.DatasetHashes(None, None)
    phase1 = plan.tuning_runs(spec, none)
    assert [(r.seed, r.grid_point) for r in phase1] == [(0, {"lr": 1}), (0, {"lr": 2})]
    assert phase1[0].config_dict == {"lr": 1, "seed": 0, "reproducibility": True}
    assert [r.run_key for r in plan.tuning_runs(spec, none)] == [r.run_key for r in phase1]  # stable
    phase2 = plan.final_runs(spec, none, {("BPR", "synth-mm"): {"lr": 2}})
    assert [(r.seed, r.grid_point) for r in phase2] == [(1, {"lr": 2})]
    assert phase2[0].grid_id == phase1[1].grid_id != phase1[0].grid_id
    folder = tmp_path / "synth-mm"
    folder.mkdir()
    (folder / "synth-mm.inter").write_text("a\tb\n")
    (folder / "synth-mm.ddi").write_text("1 2\n")
    hashes = plan.dataset_hashes("synth-mm")
    assert hashes.files == dir_sha256(folder) and hashes.ddi is not None
    changed = plan.tuning_runs(spec, {"synth-mm": hashes})
    assert {r.run_key for r in changed}.isdisjoint(r.run_key for r in phase1)  # new data, new runs
    assert plan.tuning_runs(spec, none, "other:run")[0].run_key != phase1[0].run_key


def test_metric_directions():
    assert stats.metric_direction("recall@20") == 1 and stats.metric_direction("NDCG@10") == 1
    for name in ("jaccard", "f1", "prauc", "precision@5", "map@10"):
        assert stats.metric_direction(name) == 1
    assert stats.metric_direction("ddi_rate") == -1 and stats.metric_direction("DDI") == -1
    assert stats.metric_direction("avg_med") == 0


class _Req:
    def __init__(self, key, model, point, seed, dataset="d"):
        self.run_key, self.model, self.dataset, self.seed = key, model, dataset, seed
        self.grid_point, self.grid_id = point, json.dumps(point)


def _row(key, model, seed, valid, test, status="ok", bigger=1):
    return {"run_key": key, "model": model, "dataset": "d", "seed": seed, "status": status,
            "best_valid_score": valid, "valid_bigger": bigger, "test_result": test, "history": []}


def test_selection_uses_validation_only():
    reqs = [_Req("a0", "M", {"lr": 1}, 0), _Req("a1", "M", {"lr": 1}, 1),
            _Req("b0", "M", {"lr": 2}, 0), _Req("b1", "M", {"lr": 2}, 1)]
    # lr=2 is better on validation but far worse on test: the test numbers must not influence the choice.
    rows = [_row("a0", "M", 0, 0.10, {"recall@10": 0.9}), _row("a1", "M", 1, 0.11, {"recall@10": 0.9}),
            _row("b0", "M", 0, 0.20, {"recall@10": 0.1}), _row("b1", "M", 1, 0.21, {"recall@10": 0.1})]
    assert stats.choose_configs(reqs, rows) == {("M", "d"): {"lr": 2}}
    lower = [dict(r, valid_bigger=0) for r in rows]  # a lower-is-better validation metric flips the choice
    assert stats.choose_configs(reqs, lower) == {("M", "d"): {"lr": 1}}
    rows[3]["status"] = "failed"  # a point with a failed run is not eligible
    assert stats.choose_configs(reqs, rows) == {("M", "d"): {"lr": 1}}


def test_aggregation_best_marks_and_paired_tests():
    seeds = range(5)
    reqs, rows = [], []
    values = {"good": [0.30, 0.31, 0.29, 0.32, 0.30], "bad": [0.20, 0.22, 0.21, 0.19, 0.20]}
    ddi = {"good": [0.09, 0.10, 0.09, 0.10, 0.09], "bad": [0.05, 0.06, 0.05, 0.05, 0.06]}
    for model in values:
        for s in seeds:
            reqs.append(_Req(f"{model}{s}", model, {}, s))
            rows.append(_row(f"{model}{s}", model, s, 0.1,
                             {"jaccard": values[model][s], "ddi_rate": ddi[model][s], "jaccard_std": 0.01}))
    chosen = {("good", "d"): {}, ("bad", "d"): {}}
    [table] = stats.build_tables(["d"], ["good", "bad"], reqs, rows, chosen)
    assert table.metrics == ["jaccard", "ddi_rate"]  # bootstrap '_std' entries are not columns
    [listed] = stats.build_tables(["d"], ["good", "bad"], reqs, rows, chosen, ["recall@20", "ddi_rate", "jaccard"])
    assert listed.metrics == ["ddi_rate", "jaccard"]  # the spec's order, only what this dataset reports
    cell = table.cells[("good", "jaccard")]
    assert cell.mean == pytest.approx(np.mean(values["good"])) and cell.std == pytest.approx(
        np.std(values["good"], ddof=1))
    assert table.best == {"jaccard": "good", "ddi_rate": "bad"}  # DDI rate: lower is better
    assert cell.best and not table.cells[("bad", "jaccard")].best and table.cells[("bad", "ddi_rate")].best
    jac = table.tests[("bad", "jaccard")]
    assert jac.n == 5 and jac.t_p < 1e-3 and jac.wilcoxon_p == pytest.approx(1 / 32)  # exact, one-sided
    dd = table.tests[("good", "ddi_rate")]
    assert dd.t_p < 1e-3 and dd.wilcoxon_p == pytest.approx(1 / 32)
    # The wrong direction would give p close to 1: check the test is one-sided the right way round.
    flipped = stats.paired_test(table.cells[("bad", "jaccard")].values, table.cells[("good", "jaccard")].values, 1)
    assert flipped.t_p > 0.99 and flipped.wilcoxon_p > 0.9
    same = stats.paired_test({0: 1.0, 1: 2.0}, {0: 1.0, 1: 2.0}, 1)
    assert same.t_p == 1.0 and same.wilcoxon_p == 1.0
    assert math.isnan(stats.paired_test({0: 1.0}, {0: 0.5}, 1).t_p)


def test_store_roundtrip_and_wal(tmp_path):
    with ResultStore(tmp_path / "r.sqlite") as store:
        assert store.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        store.record({"run_key": "k", "status": "ok", "model": "M", "dataset": "d", "seed": 0, "grid_id": "g",
                      "grid_point": {"lr": 1}, "config_dict": {"seed": 0}, "run_fn": FAKE, "test_result": {"x": 1.0},
                      "finished_at": "now"})
        with pytest.raises(Exception):  # a NOT NULL violation rolls back: no partial row
            store.record({"run_key": "k2", "status": "ok", "model": "M"})
        [row] = store.rows()
        assert row["grid_point"] == {"lr": 1} and row["test_result"] == {"x": 1.0}
        assert store.finished_keys() == {"k"} and store.finished_keys("failed") == set()
    (tmp_path / "junk.sqlite").write_text("not a database at all, just text" * 100)
    with pytest.raises(UserError, match="not a usable results store"):
        ResultStore(tmp_path / "junk.sqlite")


def test_cli_end_to_end_with_failures_resume_and_outputs(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RECBOLE_EXT_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("RECBOLE_EXT_CACHE", str(tmp_path / "cache"))
    data = tmp_path / "data" / "synth-ehr-small"
    data.mkdir(parents=True)
    (data / "synth-ehr-small.inter").write_text("x\n")
    (data / "synth-ehr-small_ddi.npy").write_bytes(b"\x00\x01")
    spec = write_spec(tmp_path / "s.yaml", tuning_seeds=1, models=[
        "A", {"name": "B", "grid": {"learning_rate": [0.1, 0.01]}},
        {"name": "Broken", "config": {"fake_fail": True}}, {"name": "Crash", "config": {"fake_crash": True}}])
    out = tmp_path / "out"
    argv = [str(spec), "--out", str(out), "--workers", "2", "--run-fn", FAKE, "--no-progress"]
    assert cli.main(argv) == 1  # failures make the exit status non-zero, but every other run finished
    summary = json.loads(capsys.readouterr().out.splitlines()[0])
    # phase 1: A, B x2, Broken, Crash on seed 0; phase 2: the chosen points of A and B on seed 1
    assert summary == {"spec": "t", "out": str(out), "runs": 7, "executed": 7, "skipped": 0, "failed_now": 2,
                       "failed_total": 2, "missing": 0}
    with ResultStore(out / "results.sqlite") as store:
        rows = {(r["model"], r["seed"], json.dumps(r["grid_point"])): r for r in store.rows()}
    broken = rows[("Broken", 0, "{}")]
    assert broken["status"] == "failed" and "fake failure requested" in broken["error"]
    assert "RuntimeError" in broken["traceback"]
    crash = rows[("Crash", 0, "{}")]
    assert crash["status"] == "failed" and "exited with code 3" in crash["error"]
    ok = rows[("A", 1, "{}")]
    assert ok["status"] == "ok" and ok["protocol"] == {"split": "fake", "mask": "none", "bootstrap": False}
    assert ok["dataset_sha256"] == dir_sha256(data) and ok["ddi_sha256"]
    assert ok["code_version"].startswith(("git:", "recbole-ext==")) and ok["library_versions"]["numpy"]
    assert ok["wall_time_s"] > 0 and ok["peak_rss_mb"] > 10 and ok["history"] and ok["valid_metric"] == "jaccard"
    # Resume: finished runs are skipped, the two failed ones retried (and fail again).
    assert cli.main(argv) == 1
    again = json.loads(capsys.readouterr().out.splitlines()[0])
    assert (again["executed"], again["skipped"], again["failed_now"]) == (2, 5, 2)
    assert cli.main(argv + ["--no-retry-failed"]) == 1
    assert json.loads(capsys.readouterr().out.splitlines()[0])["executed"] == 0
    assert (out / "runs" / ".gitignore").read_text() == "*\n"
    # Outputs
    md = (out / "leaderboard.md").read_text()
    assert "## synth-ehr-small" in md and "ddi_rate ↓" in md and "**" in md and "(1 failed)" in md
    assert "Chosen configurations: A: defaults; B: learning_rate=" in md and "Broken: none finished" in md
    with open(out / "leaderboard.csv") as fh:
        table = list(csv.DictReader(fh))
    assert {r["model"] for r in table} == {"A", "B", "Broken", "Crash"}
    best = [r for r in table if r["metric"] == "ddi_rate" and r["best"] == "1"]
    assert len(best) == 1 and best[0]["direction"] == "-1"
    with open(out / "runs.csv") as fh:
        assert len(list(csv.DictReader(fh))) == 7
    tex = (out / "leaderboard.tex").read_text()
    assert r"\textbf{" in tex and r"\begin{tabular}" in tex and r"$\downarrow$" in tex
    plots = {p.name for p in (out / "plots").iterdir()}
    assert {"bars_jaccard.png", "bars_ddi_rate.png", "accuracy_vs_ddi_synth-ehr-small.png",
            "curves_synth-ehr-small.png"} <= plots
    assert all((out / "plots" / p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in plots)
    page = (out / "leaderboard.html").read_text()
    assert "http://" not in page and "https://" not in page and page.count("data:image/png;base64,") == len(plots)


def test_cli_report_only_and_bad_arguments(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RECBOLE_EXT_DATA", str(tmp_path / "data"))
    spec = write_spec(tmp_path / "s.yaml", models=["A"], seeds=1)
    out = tmp_path / "out"
    assert cli.main([str(spec), "--out", str(out), "--run-fn", FAKE, "--report-only", "--no-progress"]) == 1
    assert json.loads(capsys.readouterr().out.splitlines()[0])["missing"] == 1
    with pytest.raises(UserError, match="--workers must be at least 1"):
        cli.main([str(spec), "--workers", "0"])
    with pytest.raises(UserError, match="--address only applies"):
        cli.main([str(spec), "--address", "x:1"])
    with pytest.raises(UserError, match="invalid choice"):
        cli.main([str(spec), "--backend", "slurm"])
    typo = write_spec(tmp_path / "typo.yaml", models=["BRP"], seeds=1)
    with pytest.raises(UserError, match="unknown model 'BRP'"):  # checked before any run starts
        cli.main([str(typo), "--out", str(tmp_path / "typo")])
    assert not (tmp_path / "typo").exists()
    bad_point = write_spec(tmp_path / "bad.yaml", models=[{"name": "RETAIN", "grid": {"dropout_prob": [0.5, 1.0]}}],
                           seeds=1)
    with pytest.raises(UserError, match=r"RETAIN on synth-ehr-small at \{'dropout_prob': 1.0\}: RETAIN: option "
                                        r"dropout_prob=1.0 must be in \[0, 1\)"):
        cli.main([str(bad_point), "--out", str(tmp_path / "bad")])
    assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize("path", sorted((REPO / "leaderboards").glob("*.yaml")), ids=lambda p: p.stem)
def test_bundled_specs_pass_the_up_front_checks(path, tmp_path, monkeypatch):
    spec = load_spec(path)
    cli.check_models_and_options(spec, build=False)  # what --report-only checks
    # Full MIMIC and the Amazon sets are not on this machine: placeholder folders stand in for every dataset, so
    # that each run's configuration builds and the spec's metrics are checked against what the runs compute.
    for name in spec.datasets:
        (tmp_path / name).mkdir()
        (tmp_path / name / f"{name}.visit").touch()
    monkeypatch.setenv("RECBOLE_EXT_DATA", str(tmp_path))
    cli.check_models_and_options(spec)


@pytest.mark.parametrize("spec,needle", [
    ({"datasets": ["no-such-data"]}, "RETAIN on no-such-data: dataset 'no-such-data' not found"),
    ({"metrics": ["recall@10"]}, "metrics ['recall@10'] are computed on no dataset of the board"),
    ({"datasets": ["synth-ehr-small", "synth-mm"], "metrics": ["jaccard"],
      "models": [{"name": "RETAIN", "datasets": ["synth-ehr-small"]}, {"name": "BPR", "datasets": ["synth-mm"]}]},
     "none of metrics ['jaccard'] is computed on synth-mm"),
    ({"datasets": ["synth-ehr-small", "synth-mm"]}, "RETAIN on synth-mm: model RETAIN needs a medication"),
])
def test_runs_that_cannot_start_are_refused_before_any_run(spec, needle, tmp_path):
    """A missing dataset, a model on the wrong task or metrics no run computes: one error, nothing written (each
    run used to fail on its own in a worker, or the board came out with empty tables)."""
    body = {"name": "t", "task": "mixed", "datasets": ["synth-ehr-small"], "seeds": [0], "config": {"epochs": 1},
            "models": ["RETAIN"], **spec}
    path = tmp_path / "spec.yaml"
    path.write_text(json.dumps(body))
    with pytest.raises(UserError, match=re.escape(needle)):
        cli.main([str(path), "--out", str(tmp_path / "out"), "--no-progress"])
    assert not (tmp_path / "out").exists()


def test_markdown_rows_have_as_many_cells_as_the_header():
    from recbole_ext.leaderboard.report import markdown
    from recbole_ext.leaderboard.stats import DatasetTable

    prov = {"runs": 1, "failed": 0, "wall_time_s": 0.0, "code_versions": ["x"], "dataset_hashes": {},
            "protocols": {}, "libraries": {}}
    for metrics in ([], ["jaccard"]):
        text = markdown("t", [DatasetTable("d", metrics, ["RETAIN"])], prov, [])
        rows = [line for line in text.splitlines() if line.startswith("|")][:3]  # header, separator, RETAIN
        assert len({row.count("|") for row in rows}) == 1, rows


def test_yaml_exponent_notation_in_a_grid_is_checked_as_the_number_it_becomes():
    """YAML reads 1e-3 (no dot) as text; the run's Config parses it to 0.001, so the up-front check does too."""
    import yaml

    text = ("name: t\ntask: medrec\ndatasets: [synth-ehr-small]\nseeds: [0]\n"
            "models:\n  - name: RETAIN\n    grid: {learning_rate: [1e-3, %s]}\n")
    cli.check_models_and_options(parse_spec(yaml.safe_load(text % "5e-4"), "s.yaml"), build=False)
    with pytest.raises(UserError, match=r"option learning_rate=-0.0005 must be > 0"):
        cli.check_models_and_options(parse_spec(yaml.safe_load(text % "-5e-4"), "s.yaml"), build=False)


def run_with_its_own_data_folder(model, dataset, config_dict=None, on_valid=None):
    """A run function whose dataset folder is known only once it has run (RecBole's own ml-100k, a multimodal
    dataset read from its cache): the effective config's data_path is that folder, as in RecBole's Config."""
    return {"task": "general", "config": {"data_path": config_dict["folder"], "valid_metric": "recall@10"},
            "best_valid_score": 0.5, "best_valid_result": {"recall@10": 0.5}, "test_result": {"recall@10": 0.4}}


def test_a_dataset_found_only_by_the_run_is_hashed_from_the_folder_it_read(tmp_path):
    from recbole_ext.leaderboard import worker
    from recbole_ext.utils.hashing import dir_sha256

    folder = tmp_path / "mydata"
    (folder / "mydata").mkdir(parents=True)  # a folder named like the dataset inside it must not be what is hashed
    (folder / "mydata.inter").write_text("user_id:token\titem_id:token\nu1\ti1\n")
    payload = {"run_key": "k", "model": "BPR", "dataset": "mydata", "seed": 0, "grid_id": "g", "grid_point": {},
               "config_dict": {"folder": str(folder)}, "run_fn": f"{__name__}:run_with_its_own_data_folder",
               "dataset_sha256": None, "ddi_sha256": None}
    row = worker.execute(payload)
    assert row["status"] == "ok", row.get("error")
    assert row["dataset_sha256"] == dir_sha256(folder) != dir_sha256(folder / "mydata")
