"""`python run.py list models|datasets|metrics`: what it says about each kind, its filters, JSON and errors."""
from __future__ import annotations

import json
import re

import pytest

from recbole_ext.catalog import catalog, list_models
from recbole_ext.cli import PREPARERS, main
from recbole_ext.errors import UserError


def _json_rows(capsys, *argv) -> list[dict]:
    assert main(["list", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def _by_name(rows: list[dict]) -> dict:
    return {r["name"]: r for r in rows}


def test_models_name_their_tasks_vectors_and_paper(capsys):
    models = _by_name(_json_rows(capsys, "models"))
    mambarec = {k: models["MambaRec"][k] for k in ("name", "tasks", "source", "type", "paper", "vectors", "year")}
    assert mambarec == {"name": "MambaRec", "tasks": ["mmrec"], "source": "recbole-ext", "type": "general",
                        "paper": "MambaRec (CIKM 2025, arXiv 2509.09114)", "vectors": True, "year": 2025}
    assert models["CafeMed"]["tasks"] == ["medrec"] and not models["CafeMed"]["vectors"]
    # RecBole's general recommenders all run under the MMRec protocol too (user-batch and non-gradient ones
    # included: training/mmrec_zoo.py); only BPR and LightGCN have a vector adapter
    assert models["BPR"]["tasks"] == ["general", "mmrec"] and models["BPR"]["vectors"]
    assert models["LightGCN"]["vectors"] and not models["NeuMF"]["vectors"]
    assert models["MultiVAE"]["tasks"] == ["general", "mmrec"] and models["Pop"]["tasks"] == ["general", "mmrec"]
    assert models["BPR"]["source"] == "RecBole built-in" and models["BPR"]["paper"] == "RecBole built-in (general)"


def test_every_recbole_ext_model_names_its_own_paper(monkeypatch):
    """A model that forgot its `paper` would show its base class's (MambaRec would read as MGCN)."""
    from recbole_ext import registry
    from recbole_ext.registry import ext_models, resolve_ext_model

    monkeypatch.setattr(registry, "_extra_models", {})  # the shipped models, not those other tests register
    rows = _by_name(list_models())
    for name in ext_models():
        own = vars(resolve_ext_model(name)).get("paper")
        assert own and rows[name]["paper"] == own, name


def test_every_recbole_ext_model_states_its_year_inputs_and_parity_evidence(monkeypatch):
    """The README's zoo table shows these; a parity claim that names a test must name one that exists."""
    from pathlib import Path

    from recbole_ext import registry
    from recbole_ext.registry import ext_models, resolve_ext_model

    monkeypatch.setattr(registry, "_extra_models", {})
    tests = Path(__file__).parent
    for name in ext_models():
        own = vars(resolve_ext_model(name))
        assert own.get("uses") and own.get("parity"), name
        assert own.get("year") is None and name == "MedContext" or 2000 < own["year"] <= 2026, name
        assert str(own["year"] or "") in own["paper"] or "ablation" in own["paper"] or name == "MedContext", name
        for test_file in re.findall(r"`(test_\w+\.py)`", own["parity"]):
            assert (tests / test_file).is_file(), f"{name} cites {test_file}, which does not exist"


def _board(folder, name: str, rows: list[tuple]) -> None:
    (folder / name).mkdir(parents=True)
    lines = ["dataset,model,metric,mean,std,n"] + [",".join(map(str, row)) for row in rows]
    (folder / name / "leaderboard.csv").write_text("\n".join(lines) + "\n")


def test_results_column_reads_each_tasks_bundled_metric_from_the_boards(tmp_path, capsys):
    _board(tmp_path, "mm", [("synth-mm", "MambaRec", "recall@20", 0.15583, 0.0054), ("synth-mm", "MambaRec",
            "ndcg@20", 0.07, 0.001), ("baby", "MGCN", "recall@20", 0.09, 0.0), ("synth-mm", "VBPR", "recall@10", 0.1, 0)])
    _board(tmp_path, "med", [("synth-ehr-small", "CafeMed", "jaccard", 0.2167, 0.0004),
                             ("synth-ehr-small", "CafeMed", "f1", 0.34, 0.001)])
    rows = _by_name(catalog("models", source="recbole-ext", results=tmp_path))
    assert rows["MambaRec"]["result"] == "synth-mm R@20 0.1558 ± 0.0054"
    assert rows["CafeMed"]["result"] == "synth-ehr-small Jaccard 0.2167 ± 0.0004"
    assert rows["MGCN"]["result"] == "-" and rows["VBPR"]["result"] == "-"  # another dataset / metric only
    assert main(["list", "models", "--task", "mmrec", "--source", "recbole-ext", "--markdown",
                 "--results", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].endswith("| bundled data, tuned: test mean ± std |")
    assert next(line for line in lines if line.startswith("| MambaRec |")).endswith("| synth-mm R@20 0.1558 ± 0.0054 |")


@pytest.mark.parametrize("setup, needle", [
    (lambda d: None, "no leaderboard output under"),
    (lambda d: (d / "b").mkdir() or (d / "b" / "leaderboard.csv").write_text("model,mean\nX,1\n"),
     "is not a leaderboard table: no column dataset, metric, std"),
    (lambda d: _board(d, "b", [("synth-mm", "BPR", "recall@20", "n/a", 0.1)]), "has a non-numeric mean or std"),
    (lambda d: (_board(d, "a", [("synth-mm", "BPR", "recall@20", 0.1, 0.1)]),
                _board(d, "b", [("synth-mm", "BPR", "recall@20", 0.2, 0.1)])), "disagree on synth-mm BPR recall@20"),
])
def test_results_folder_errors_are_one_line(setup, needle, tmp_path, capsys):
    setup(tmp_path)
    assert main(["list", "models", "--results", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0], err
    assert main(["list", "datasets", "--results", str(tmp_path)]) == 2
    assert "--results does not apply to datasets" in capsys.readouterr().err


def test_models_table_is_aligned(capsys):
    assert main(["list", "models"]) == 0
    lines = capsys.readouterr().out.splitlines()
    header = lines[0]
    mambarec = next(line for line in lines if line.startswith("MambaRec "))
    assert header.split() == ["model", "tasks", "vectors", "paper"]
    for column, cell in (("tasks", "mmrec"), ("vectors", "yes"), ("paper", "MambaRec (CIKM 2025")):
        assert mambarec.index(cell) == header.index(column), column


def test_datasets_say_where_they_are_and_how_to_prepare_them(capsys):
    rows = _by_name(_json_rows(capsys, "datasets"))
    assert rows["ml-100k"]["prepared"] and rows["ml-100k"]["source"] == "RecBole built-in"
    assert rows["synth-mm"]["task"] == "mmrec" and rows["synth-mm"]["prepared"]
    assert rows["synth-mm"]["where"] == "dataset_atomic/synth-mm" and rows["synth-mm"]["prepare"] is None
    assert rows["mimic3-demo"]["task"] == "medrec" and rows["mimic3-demo"]["prepared"]
    assert rows["baby"]["task"] == "mmrec" and not rows["baby"]["prepared"]
    assert rows["baby"]["prepare"] == "python run.py prepare mmrec --src <MMRec data>/baby --name baby"
    assert rows["mimic4"]["prepare"] == "python run.py prepare mimic4 --src DIR"
    assert main(["list", "datasets"]) == 0
    text = capsys.readouterr().out
    assert re.search(r"^synth-mm +mmrec +yes +dataset_atomic/synth-mm$", text, re.M)
    assert re.search(r"^baby +mmrec +no +properties/dataset/baby\.yaml \(not prepared\) +python run\.py prepare "
                     r"mmrec ", text, re.M)


def test_every_prepare_command_names_a_prepare_kind(capsys):
    commands = [r["prepare"] for r in _json_rows(capsys, "datasets") if r["prepare"]]
    assert commands
    for command in commands:
        kinds = command.split()[3].split("|")  # python run.py prepare KIND[|KIND...] ...
        assert command.startswith("python run.py prepare ") and set(kinds) <= set(PREPARERS), command


def test_datasets_under_another_root(tmp_path, monkeypatch, capsys):
    """$RECBOLE_EXT_DATA: a user's prepared folder is found with its task, the bundled ones say where they are,
    and an MMRec source folder counts as prepared (a run converts it)."""
    monkeypatch.setenv("RECBOLE_EXT_DATA", str(tmp_path))
    (tmp_path / "my-ehr").mkdir()
    (tmp_path / "my-ehr" / "my-ehr.visit").write_text("")
    (tmp_path / "half-done").mkdir()  # a folder without the files of any dataset
    (tmp_path / "mmrec" / "sports").mkdir(parents=True)
    rows = _by_name(_json_rows(capsys, "datasets"))
    assert rows["my-ehr"]["task"] == "medrec" and rows["my-ehr"]["prepared"]
    assert rows["half-done"]["task"] == "general" and not rows["half-done"]["prepared"]
    assert "mmrec" not in rows  # the folder of MMRec sources is not a dataset
    assert not rows["synth-mm"]["prepared"] and "ships in" in rows["synth-mm"]["prepare"]
    assert rows["sports"]["prepared"] and rows["sports"]["source"] == "MMRec source"
    assert not rows["baby"]["prepared"]


def test_metrics_name_their_task_direction_and_cutoff(capsys):
    metrics = _by_name(_json_rows(capsys, "metrics"))
    assert metrics["Recall"] == {"name": "Recall", "tasks": ["general", "mmrec"], "better": "higher", "topk": True,
                                 "kind": "ranking", "source": "RecBole built-in"}
    assert metrics["GiniIndex"]["better"] == "lower" and metrics["GiniIndex"]["topk"]
    assert metrics["AUC"]["tasks"] == ["general"] and metrics["AUC"]["kind"] == "value"
    assert not metrics["GAUC"]["topk"]
    assert metrics["Jaccard"] == {"name": "Jaccard", "tasks": ["medrec"], "better": "higher", "topk": False,
                                  "kind": "set", "source": "recbole-ext"}
    assert metrics["DDI_Rate"]["better"] == "lower" and metrics["Avg_Med"]["better"] == "none"


@pytest.mark.parametrize("what,task,present,absent", [
    ("models", "medrec", "CafeMed", "BPR"),
    ("models", "mmrec", "MultiVAE", "CafeMed"),
    ("datasets", "mmrec", "synth-mm", "mimic3-demo"),
    ("metrics", "mmrec", "NDCG", "AUC"),
    ("metrics", "medrec", "DDI_Rate", "Recall"),
])
def test_task_filters(what, task, present, absent, capsys):
    rows = _by_name(_json_rows(capsys, what, "--task", task))
    assert present in rows and absent not in rows
    assert all(task in r.get("tasks", [r.get("task")]) for r in rows.values())


@pytest.mark.parametrize("argv,needle", [
    (["list", "model"], "invalid choice: 'model' (choose from 'models', 'datasets', 'metrics')"),
    (["list", "models", "--task", "seq"], "invalid choice: 'seq' (choose from 'general', 'mmrec', 'medrec')"),
    (["list"], "the following arguments are required: what"),
])
def test_list_errors_are_one_line_with_the_choices(argv, needle, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0]


def test_catalog_api_errors_name_the_choices():
    with pytest.raises(UserError, match="use one of: models, datasets, metrics"):
        catalog("model")
    with pytest.raises(UserError, match="use one of: general, mmrec, medrec"):
        catalog("metrics", task="sequential")


def test_source_filter_and_markdown(capsys):
    assert main(["list", "models", "--source", "recbole-ext", "--markdown"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == ("| model | tasks | paper | year | uses | vectors | parity with the official code |"
                        ) and lines[1] == "|---|" * 1 + "---|" * 6
    names = [line.split(" | ")[0].lstrip("| ") for line in lines[2:]]
    assert "MambaRec" in names and "BPR" not in names  # only recbole-ext's own
    assert main(["list", "models", "--source", "recbole", "--json"]) == 0
    names = {row["name"] for row in json.loads(capsys.readouterr().out)}
    assert "BPR" in names and "MambaRec" not in names
    assert main(["list", "datasets", "--markdown"]) == 0
    out = capsys.readouterr().out
    assert "`python run.py prepare mmrec --src <MMRec data>/baby --name baby`" in out  # code, not an HTML tag
    assert main(["list", "datasets", "--source", "recbole"]) == 2
    assert "--source recbole does not apply to datasets" in capsys.readouterr().err
