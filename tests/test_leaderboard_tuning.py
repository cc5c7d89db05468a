"""Tuned leaderboards: one Optuna study per (model, dataset) with the same budget for every model, selection on
validation only, resumable after kill -9, pruning, and the search spaces the bundled boards rely on."""
from __future__ import annotations

import csv
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest
import yaml

from recbole_ext.errors import UserError
from recbole_ext.leaderboard.spec import parse_spec
from recbole_ext.leaderboard.tuning_spec import SEARCH_DIR, declared_space, parse_space
from tests.test_leaderboard_helpers import REPO, cli_env, db_rows, integrity, start_cli

SPACE_A = {"source": "test", "space": {"learning_rate": {"type": "float", "low": 1e-4, "high": 0.1, "log": True}}}
SPACE_B = {"source": "test", "space": {"embedding_size": {"type": "categorical", "choices": [16, 32, 64]},
                                       "reg_weight": {"type": "float", "low": 0.0, "high": 1.0}}}


def tuned_spec(path, trials=3, seeds=(1, 2), pruner="none", config=None, models=None, **tuning):
    spec = {"name": "t", "task": "general", "datasets": ["d1"], "seeds": list(seeds),
            "tuning": {"trials": trials, "sampler": "tpe", "seed": 0, "max_epochs": 7, "pruner": pruner, **tuning},
            "models": models or [{"name": "A", "search": SPACE_A}, {"name": "B", "search": SPACE_B}]}
    if config:
        spec["config"] = config
    path.write_text(yaml.safe_dump(spec))
    return path


def run_cli(spec, out, env, *args, timeout=300):
    proc = start_cli(spec, out, env, *args)
    stdout, stderr = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, stderr[-3000:]
    return stdout


def trials_table(out) -> list[dict]:
    with open(out / "tuning.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def optuna_trials(out) -> list[tuple]:
    """(study, number, state) of every trial in the store's Optuna tables."""
    conn = sqlite3.connect(str(out / "results.sqlite"))
    try:
        return conn.execute("SELECT s.study_name, t.number, t.state FROM trials t JOIN studies s "
                            "ON s.study_id = t.study_id ORDER BY s.study_name, t.number").fetchall()
    finally:
        conn.close()


# ------------------------------------------------------------------------------------------------- the spec
BASE = {"task": "general", "datasets": ["d1"], "seeds": [1, 2], "models": [{"name": "A", "search": SPACE_A}],
        "tuning": {"trials": 3, "max_epochs": 5}}


@pytest.mark.parametrize("change,message", [
    ({"seeds": [0, 1]}, "the tuning seed 0 is also in seeds"),
    ({"models": [{"name": "A", "grid": {"learning_rate": [0.1, 0.2]}}]}, "give a 'grid', but the board is tuned"),
    ({"config": {"epochs": 10}}, "config sets epochs, but a tuned board caps epochs"),
    ({"tuning_seeds": 1}, "'tuning_seeds' belongs to grid boards"),
    ({"tuning": {"trials": 3, "max_epochs": 5, "sampler": "bayes"}}, "tuning.sampler 'bayes' is not one of"),
    ({"tuning": {"trials": 0, "max_epochs": 5}}, "tuning.trials must be a positive integer"),
    ({"tuning": {"trials": 3}}, "tuning needs 'max_epochs'"),
    ({"tuning": {"trials": 3, "max_epochs": 5, "budget": 1}}, r"unknown key\(s\) \['budget'\] in tuning"),
    ({"tuning": {"trials": 3, "max_epochs": 5, "datasets": {"d2": {"trials": 1}}}}, "names 'd2', which is not in"),
])
def test_tuned_spec_mistakes_are_one_line_errors(change, message):
    with pytest.raises(UserError, match=message):
        parse_spec({**BASE, **change}, "s.yaml")


def test_search_without_a_budget_is_refused():
    spec = {k: v for k, v in BASE.items() if k != "tuning"}
    with pytest.raises(UserError, match="gives 'search:' but the spec has no 'tuning:' budget"):
        parse_spec(spec, "s.yaml")


@pytest.mark.parametrize("param,message", [
    ({"type": "float", "low": 0.1, "high": 0.1}, "needs low < high"),
    ({"type": "float", "low": 0.0, "high": 1.0, "log": True}, "log-scaled, so low must be > 0"),
    ({"type": "categorical", "choices": []}, "choices must be a non-empty list"),
    ({"type": "categorical", "choices": [1, 1]}, "repeats a value"),
    ({"type": "int", "low": 1.5, "high": 4}, "non-integer bounds"),
    ({"type": "normal"}, "type must be one of"),
    ({"type": "float", "low": 0, "high": 1, "step": 0.1}, r"unknown key\(s\) \['step'\]"),
])
def test_search_space_mistakes_are_one_line_errors(param, message):
    with pytest.raises(UserError, match=message):
        parse_space("A", {"source": "x", "space": {"p": param}}, "s.yaml")


def test_epochs_and_seed_cannot_be_searched():
    with pytest.raises(UserError, match=r"\['epochs'\] cannot be searched"):
        parse_space("A", {"space": {"epochs": {"type": "categorical", "choices": [5, 10]}}}, "s.yaml")


def test_every_declared_space_parses_names_a_source_and_fits_the_models_bounds():
    """Each file of properties/search/: a known model, a source, and every value the sampler can draw (each choice,
    each range's ends) passes the model's option checks, so no trial dies on a bad value."""
    from recbole_ext.options import check_options
    from recbole_ext.registry import model_class

    files = sorted(SEARCH_DIR.glob("*.yaml"))
    assert len(files) >= 17
    for path in files:
        space = declared_space(path.stem)
        assert space.source, path
        cls = model_class(path.stem)
        for p in space.params:
            for value in p.extremes():
                check_options(cls, {p.name: value})


def test_the_bundled_tuned_boards_have_a_space_for_every_model():
    from recbole_ext.leaderboard.spec import load_spec
    from recbole_ext.leaderboard.tuning_spec import space_for

    for name in ("readme-multimodal", "readme-ml-100k-mm", "readme-medrec", "multimodal", "medrec"):
        spec = load_spec(REPO / "leaderboards" / f"{name}.yaml")
        assert spec.tuning is not None
        for m in spec.models:
            assert space_for(m, spec.source).params


# ------------------------------------------------------------------------------------------------- a tuned board
@pytest.fixture(scope="module")
def tuned_board(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tuned")
    spec = tuned_spec(tmp / "s.yaml", trials=4)
    out = tmp / "out"
    run_cli(spec, out, cli_env(tmp), "--workers", "2")
    return out


def test_every_model_gets_the_same_number_of_trials_and_epoch_cap(tuned_board):
    rows = db_rows(tuned_board)
    trials = [r for r in rows if r["phase"] == "tune"]
    for model in ("A", "B"):
        mine = [r for r in trials if r["model"] == model]
        assert sorted(r["trial"] for r in mine) == [0, 1, 2, 3]
        for r in mine:
            config = json.loads(r["config_dict"])
            assert config["seed"] == 0 and config["epochs"] == 7 and config["evaluate_test"] is False
            assert json.loads(r["test_result"]) == {}  # the test split was never scored
    states = optuna_trials(tuned_board)
    assert len(states) == 8 and {s for _, _, s in states} == {"COMPLETE"}


def test_the_chosen_configuration_is_the_best_validation_trial_trained_on_every_seed(tuned_board):
    rows = db_rows(tuned_board)
    for model in ("A", "B"):
        trials = [r for r in rows if r["phase"] == "tune" and r["model"] == model]
        best = max(trials, key=lambda r: r["best_valid_score"])
        finals = [r for r in rows if r["phase"] == "final" and r["model"] == model]
        assert sorted(r["seed"] for r in finals) == [1, 2]
        for r in finals:
            assert json.loads(r["grid_point"]) == json.loads(best["grid_point"])
            assert json.loads(r["config_dict"])["epochs"] == 7 and json.loads(r["test_result"])
        chosen = [t for t in trials_table(tuned_board) if t["model"] == model and t["chosen"] == "1"]
        assert [int(t["trial"]) for t in chosen] == [best["trial"]]


def test_the_report_has_a_tuning_section_and_progress_plot(tuned_board):
    md = (tuned_board / "leaderboard.md").read_text()
    assert "## Tuning" in md and "4 trials per model (tpe sampler, seed 0), at most 7 epochs" in md
    assert "| d1 | A | 4/4 |" in md
    assert (tuned_board / "plots" / "tuning_d1.png").stat().st_size > 1000
    html = (tuned_board / "leaderboard.html").read_text()
    assert "<h2>Tuning</h2>" in html and "id='tuning'" in html


def params(out) -> list[tuple]:
    return [(t["model"], t["trial"], t["params"]) for t in trials_table(out)]


def test_tuning_does_not_depend_on_the_number_of_workers(tuned_board, tmp_path):
    spec = tuned_spec(tmp_path / "s.yaml", trials=4)
    out = tmp_path / "out"
    run_cli(spec, out, cli_env(tmp_path), "--workers", "1", "--tune-only")
    assert params(out) == params(tuned_board)


def test_report_only_asks_and_runs_nothing(tuned_board, tmp_path):
    before = optuna_trials(tuned_board), len(db_rows(tuned_board))
    proc = start_cli(tuned_spec(tmp_path / "s.yaml", trials=6), tuned_board, cli_env(tmp_path), "--report-only")
    proc.communicate(timeout=120)
    assert (optuna_trials(tuned_board), len(db_rows(tuned_board))) == before


# ------------------------------------------------------------------------------------------------- kill -9, resume
def test_kill_during_tuning_then_rerun_loses_and_repeats_no_finished_trial(tuned_board, tmp_path):
    env = cli_env(tmp_path)
    spec = tuned_spec(tmp_path / "s.yaml", trials=4, config={"fake_sleep": 1.0})
    out = tmp_path / "out"
    proc = start_cli(spec, out, env, "--workers", "2", "--tune-only")
    deadline = time.time() + 120
    while len([r for r in db_rows(out) if r["phase"] == "tune"]) < 3:
        assert time.time() < deadline and proc.poll() is None, "no trial finished in time"
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = {(r["model"], r["trial"]): (r["run_key"], r["finished_at"]) for r in db_rows(out)
              if r["phase"] == "tune"}
    assert integrity(out) == "ok"
    run_cli(spec, out, env, "--workers", "2", "--tune-only")
    rows = [r for r in db_rows(out) if r["phase"] == "tune"]
    after = {(r["model"], r["trial"]): (r["run_key"], r["finished_at"]) for r in rows}
    assert all(after[k] == v for k, v in before.items())  # finished trials were kept, not run again
    assert sorted(after) == [(m, t) for m in ("A", "B") for t in range(4)]  # none lost, none extra
    assert {s for _, _, s in optuna_trials(out)} == {"COMPLETE"} and len(optuna_trials(out)) == 8
    # the kill changed nothing the sampler did: the same trials as an uninterrupted board (fake_sleep does not
    # change the fake's scores)
    assert params(out) == params(tuned_board)


# ------------------------------------------------------------------------------------------------- pruning
def test_median_pruning_stops_weak_trials_which_count_against_the_budget(tmp_path):
    spec = tuned_spec(tmp_path / "s.yaml", trials=7, pruner="median", config={"fake_epochs": 7},
                      models=[{"name": "A", "search": SPACE_A}])
    out = tmp_path / "out"
    run_cli(spec, out, cli_env(tmp_path), "--workers", "2", "--tune-only")
    trials = [r for r in db_rows(out) if r["phase"] == "tune"]
    pruned = [r for r in trials if r["pruned"]]
    assert len(trials) == 7 and pruned, [(r["trial"], r["best_valid_score"]) for r in trials]
    for r in pruned:
        assert len(json.loads(r["history"])) < 7
    states = [s for _, _, s in optuna_trials(out)]
    assert states.count("PRUNED") == len(pruned) and states.count("COMPLETE") == 7 - len(pruned)
    chosen = [t for t in trials_table(out) if t["chosen"] == "1"]
    assert len(chosen) == 1 and chosen[0]["state"] == "COMPLETE"


# ------------------------------------------------------------------------------------------------- no test leakage
@pytest.mark.slow
def test_the_test_split_does_not_change_a_real_boards_trials_or_choices(tmp_path):
    """BPR tuned on synth-mm twice: as shipped, and with most test rows pointing at other items. RecBole numbers
    items in order of first appearance in the .inter file, test rows included, and a different numbering is a
    different random initialisation (not information about the test split): the corruption keeps that order by
    replacing only test rows whose item appeared earlier, with an item that appeared earlier. The trials (their
    parameters, validation scores and the choice) must agree exactly."""
    import shutil

    import numpy as np

    from recbole_ext.utils.paths import dataset_root

    outs = []
    for scramble in (False, True):
        root = tmp_path / ("scrambled" if scramble else "shipped")
        data = root / "data" / "synth-mm"
        shutil.copytree(dataset_root() / "synth-mm", data)
        if scramble:
            inter = data / "synth-mm.inter"
            lines = inter.read_text().splitlines()
            rows = [line.split("\t") for line in lines[1:]]
            rng = np.random.default_rng(0)
            seen, order, changed, tests = set(), [], 0, 0  # items met so far, in order of first appearance
            for row in rows:
                item = row[1]
                if float(row[4]) == 2:
                    tests += 1
                    if item in seen:
                        row[1] = order[rng.integers(len(order))]
                        changed += row[1] != item
                if item not in seen:
                    seen.add(item)
                    order.append(item)
            assert changed > 0.8 * tests
            inter.write_text("\n".join([lines[0]] + ["\t".join(r) for r in rows]) + "\n")
        spec = tuned_spec(root / "s.yaml", trials=2, models=[{"name": "BPR", "search": {"space": {
            "learning_rate": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True}}}}])
        text = yaml.safe_load(spec.read_text())
        text.update(task="mmrec", datasets=["synth-mm"], metrics=["recall@20"])
        text["tuning"]["max_epochs"] = 2
        spec.write_text(yaml.safe_dump(text))
        # the real run function (start_cli would use the fake)
        proc = subprocess.run([sys.executable, "-m", "recbole_ext.leaderboard.cli", str(spec), "--out",
                               str(root / "out"), "--workers", "2", "--tune-only", "--no-progress"], cwd=str(root),
                              env={**cli_env(root), "RECBOLE_EXT_DATA": str(root / "data")}, capture_output=True,
                              text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        outs.append(root / "out")
    shipped, scrambled = (trials_table(o) for o in outs)
    assert len(shipped) == 2 and all(float(t["wall_time_s"]) > 1 for t in shipped)  # real training
    assert [(t["trial"], t["params"], t["best_valid_score"], t["chosen"]) for t in shipped] == \
        [(t["trial"], t["params"], t["best_valid_score"], t["chosen"]) for t in scrambled]


# ------------------------------------------------------------------------------------------------- distinct trials
SPACE_FOUR = {"source": "test", "space": {"embedding_size": {"type": "categorical", "choices": [8, 16, 32, 64]}}}


def test_the_budget_counts_distinct_configurations_and_a_small_space_runs_out(tmp_path):
    """TPE proposes configurations it has already run (4 draws from 4 points repeat with probability 0.9): a
    repeat is answered from the record and not counted, so 4 trials are 4 different configurations; a budget above
    the space's size stops when the space is exhausted, and the report says so."""
    env = cli_env(tmp_path)
    out = tmp_path / "out"
    models = [{"name": "A", "search": SPACE_FOUR}]
    run_cli(tuned_spec(tmp_path / "s.yaml", trials=4, models=models), out, env, "--workers", "2", "--tune-only")
    runs = [r for r in db_rows(out) if r["phase"] == "tune"]
    assert sorted(json.loads(r["config_dict"])["embedding_size"] for r in runs) == [8, 16, 32, 64]
    repeats = [s for _, _, s in optuna_trials(out)][len(runs):]
    assert len(optuna_trials(out)) > len(runs)  # the sampler did repeat itself; those were not run
    assert set(repeats) <= {"COMPLETE"}
    # a larger budget continues the same study: nothing is left to run, and the report says why
    run_cli(tuned_spec(tmp_path / "s.yaml", trials=6, models=models), out, env, "--workers", "2", "--tune-only")
    assert len([r for r in db_rows(out) if r["phase"] == "tune"]) == 4
    text = (out / "leaderboard.md").read_text()
    assert "4/6" in text and "space exhausted" in text


def test_a_study_from_before_the_rule_stops_counting_its_repeated_trials():
    """README boards tuned before the rule hold repeated trials that were run; they no longer count, so a rerun asks
    for new configurations up to the budget (and the repeat's first trial keeps its place)."""
    import optuna
    from optuna.distributions import CategoricalDistribution

    from recbole_ext.leaderboard.tuning import _first_of_each_configuration, _run_trials

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize")
    dist = {"embedding_size": CategoricalDistribution([8, 16, 32])}
    for size, value in [(16, 0.1), (8, 0.3), (16, 0.1), (16, 0.1), (32, 0.2)]:
        study.add_trial(optuna.trial.create_trial(params={"embedding_size": size}, distributions=dist, value=value))
    counted = _run_trials(study.get_trials())
    assert [t.number for t in counted] == [0, 1, 4]
    assert _first_of_each_configuration(study.get_trials()) == {
        (("embedding_size", "16"),): 0, (("embedding_size", "8"),): 1, (("embedding_size", "32"),): 4}
