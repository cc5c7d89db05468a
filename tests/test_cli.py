from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from recbole_ext.cli import main, parse_train_args
from recbole_ext.errors import UserError
from recbole_ext.version import __version__


def test_values_are_parsed_as_literals_never_evaluated(tmp_path):
    marker = tmp_path / "pwned"
    payload = f"__import__('pathlib').Path('{marker}').touch()"
    model, dataset, config, files = parse_train_args([
        "--model=BPR", "--dataset", "ml-100k", "--learning_rate=0.01", "--topk=[10,20]", "--reproducibility=false",
        f"--evil={payload}", "--config_files=a.yaml,b.yaml", "--eval-batch-size=512"])
    assert (model, dataset, files) == ("BPR", "ml-100k", ["a.yaml", "b.yaml"])
    assert config == {"learning_rate": 0.01, "topk": [10, 20], "reproducibility": False, "evil": payload,
                      "eval_batch_size": 512}
    assert not marker.exists()


@pytest.mark.parametrize("argv,needle", [
    (["--model=BPR"], "no dataset given"),
    (["--dataset=ml-100k"], "no model given"),
    (["--model=BPR", "ml-100k"], "unexpected argument"),
    (["--model=BPR", "--dataset=ml-100k", "--epochs"], "has no value"),
    (["--model=BPR", "--dataset=ml-100k", "--epochs=1", "--epochs=2"], "given twice"),
])
def test_parse_errors(argv, needle):
    with pytest.raises(UserError, match=needle):
        parse_train_args(argv)


def _one_error_line(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


@pytest.mark.parametrize("argv,needle", [
    (["--model=NoSuchModel", "--dataset=ml-100k"], "unknown model 'NoSuchModel'"),
    (["--model=BPR", "--dataset=no-such-data"], "dataset 'no-such-data' not found"),
    (["--model=BPR", "--dataset=ml-100k", "--learning_rate=fast"], "'learning_rate'"),
    (["--model=BPR", "--dataset=ml-100k", "--epochs=1.5"], "'epochs'"),
    (["--model=BPR", "--dataset=ml-100k", "--metrics=['NoMetric']"], "no metric named"),
    (["--model=BPR", "--dataset=ml-100k", "--valid_metric=recall@50"], "valid_metric"),
    (["--model=BPR", "--dataset=ml-100k", "--config_files=missing.yaml"], "does not exist"),
    (["--model=MambaRec", "--dataset=ml-100k"], "needs a multimodal"),
    (["--model=CafeMed", "--dataset=synth-mm"], "needs a medication"),
    (["--model=MambaRec", "--dataset=mimic3-demo"], "needs a multimodal"),
    (["--model=BPR", "--dataset=ml-100k", "--metrics=['Recall','Jaccard']", "--valid_metric=recall@10"],
     "metrics ['Jaccard'] score medication sets, but 'ml-100k' is a 'general' dataset"),
    (["--model=MambaRec", "--dataset=synth-mm", "--metrics=['F1']", "--valid_metric=f1"],
     "metrics ['F1'] score medication sets, but 'synth-mm' is a 'mmrec' dataset"),
    (["--model=CafeMed", "--dataset=no-such-data"], "dataset 'no-such-data' not found"),
    (["--model=RETAIN", "--dataset=mimic3-demo", "--valid_metric=recall@10"], "computed metrics, e.g. jaccard"),
    (["--model=BPR", "--dataset=ml-100k", "--metrics=['NDCG']", "--topk=[5]", "--valid_metric=recall@5"],
     "computed metrics, e.g. ndcg@5"),
    (["--model=BPR", "--dataset=../../tmp/x"], "invalid dataset name '../../tmp/x'"),
    (["--model=CafeMed", "--dataset=mimic3-demo", "--charm_heads=5"], "not divisible by charm_heads=5"),
    (["--model=CafeMed", "--dataset=mimic3-demo", "--dropout_prob=1.0"], "dropout_prob=1.0 must be in [0, 1)"),
    (["--model=BPR", "--dataset=ml-100k", "--learning_rate=-0.1"], "learning_rate=-0.1 must be > 0"),
    (["--model=BPR", "--dataset=ml-100k", "--seed=-1"], "seed=-1 must be in [0, 4294967295]"),
    (["--model=MambaRec", "--dataset=synth-mm", "--embedding_size=0"], "embedding_size=0 must be >= 1"),
    (["--model=MambaRec", "--dataset=synth-mm", "--eval_users_per_batch=0"], "eval_users_per_batch=0 must be >= 1"),
    (["--model=BPR", "--dataset=ml-100k", "--topk=[10,5000]", "--epochs=1", "--state=WARNING"],
     "topk 5000 exceeds the 1682 items of dataset 'ml-100k'"),  # was a torch.topk traceback after epoch 1
    (["frobnicate"], "unknown command"),
    (["prepare", "nothing"], "prepare needs a kind"),
])
def test_user_errors_are_one_line_exit_2_nothing_written(argv, needle, capsys, tmp_path):
    assert main(argv) == 2
    assert needle in _one_error_line(capsys)
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("argv,needle", [
    (["prepare", "synthetic-ehr", "--name", "../escape"], "invalid dataset name '../escape'"),
    (["prepare", "synthetic-ehr", "--name", "two words"], "invalid dataset name 'two words'"),
    (["prepare", "synthetic-ehr", "--name", "ok", "--seed", "-1"], "--seed must be >= 0"),
    (["prepare", "synthetic-ehr", "--name", "ok", "--visits", "inf"], "--visits (mean visits per patient) must be in"),
    (["prepare", "synthetic-ehr", "--name", "ok", "--persistence", "nan"], "--persistence must be a finite number"),
    (["prepare", "synthetic-mm", "--name", "/abs"], "invalid dataset name '/abs'"),
    (["prepare", "synthetic-mm", "--name", "ok", "--seed", "-3"], "--seed -3 is negative"),
    (["prepare", "synthetic-mm", "--name", "ok", "--seed", "4294967296"], "--seed 4294967296 is above 2**32 - 1"),
    (["prepare", "mmrec", "--src", ".", "--name", ".hidden"], "invalid dataset name '.hidden'"),
    (["prepare", "mimic3", "--src", ".", "--name", "a/b"], "invalid dataset name 'a/b'"),
])
def test_prepare_refuses_names_outside_the_dataset_root_and_bad_seeds(argv, needle, capsys, tmp_path, monkeypatch):
    root = tmp_path / "data" / "root"
    root.mkdir(parents=True)
    monkeypatch.setenv("RECBOLE_EXT_DATA", str(root))
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    assert needle in _one_error_line(capsys)
    assert not any(root.iterdir()) and sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_unwritable_runs_root_is_one_line(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    assert main(["--model=RETAIN", "--dataset=mimic3-demo", "--epochs=1", f"--runs_root={blocker}"]) == 2
    assert f"cannot create the run directory {blocker}/RETAIN-mimic3-demo-" in _one_error_line(capsys)
    assert main(["--model=RETAIN", "--dataset=mimic3-demo", "--epochs=1", f"--run_dir={blocker}"]) == 2
    assert f"cannot create the run directory {blocker}: " in _one_error_line(capsys)
    assert blocker.read_text() == "not a folder"


@pytest.mark.parametrize("argv", [
    ["prepare", "synthetic-ehr", "--name", "x", "--patients", "30", "--out", "{blocker}/sub"],
    ["leaderboard", "{repo}/leaderboards/quick.yaml", "--report-only", "--no-progress", "--out", "{blocker}"],
])
def test_output_folder_blocked_by_a_file_is_one_line(argv, tmp_path, capsys, repo_root):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    assert main([a.format(blocker=blocker, repo=repo_root) for a in argv]) == 2
    assert f"{blocker} is a file, not a folder" in _one_error_line(capsys)


def test_bad_yaml_file_types(tmp_path, capsys):
    (tmp_path / "bad.yaml").write_text("epochs: [1, 2\n")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    (tmp_path / "typed.yaml").write_text("train_batch_size: big\n")
    for name, needle in (("bad", "not valid YAML"), ("list", "must hold a mapping"), ("typed", "typed.yaml")):
        assert main(["--model=BPR", "--dataset=ml-100k", f"--config_files={tmp_path / name}.yaml"]) == 2
        assert needle in _one_error_line(capsys)


def test_cli_trains_and_prints_table(repo_root, tmp_path, tiny_data):
    proc = subprocess.run(
        [sys.executable, str(repo_root / "run.py"), "--model=BPR", "--dataset=tiny", "--epochs=1",
         f"--data_path={tiny_data}",
         "--show_progress=False", "--state=WARNING", "--topk=[10,20]", "--valid_metric=ndcg@10",
         f"--runs_root={tmp_path / 'runs'}"],
        capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "recall@20" in proc.stdout and "run directory" in proc.stdout
    (run_dir,) = list((tmp_path / "runs").iterdir())
    assert {"config.yaml", "result.json", "model.pth", "run.log", "log_tensorboard"} <= {p.name for p in run_dir.iterdir()}
    assert (run_dir / "log_tensorboard" / "run").is_dir()
    assert [p.name for p in tmp_path.iterdir()] == ["runs"]  # nothing in the working directory (no log_tensorboard)
    result = json.loads((run_dir / "result.json").read_text())
    assert result["model"] == "BPR"
    # the printed table shows this run's numbers: valid and test columns of the recall@20 row
    row = next(line.split() for line in proc.stdout.splitlines() if line.startswith("recall@20 "))
    assert row[1:] == [f"{result['best_valid_result']['recall@20']:.4f}", f"{result['test_result']['recall@20']:.4f}"]
    assert not (tmp_path / "log").exists() and not (tmp_path / "saved").exists()


@pytest.mark.parametrize("name,command", [("mimic3", "prepare mimic3 --src <the folder of its CSVs>"),
                                          ("mimic4", "prepare mimic4 --src <its hosp/ folder>")])
def test_missing_mimic_says_where_to_get_it_and_how_to_prepare(name, command, capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("RECBOLE_EXT_DATA", str(tmp_path))  # no prepared MIMIC there, whatever this machine has
    assert main(["--model=CafeMed", f"--dataset={name}"]) == 2
    line = _one_error_line(capsys)
    assert f"medication dataset '{name}' not found (looked for {name}.visit in {tmp_path / name})" in line
    assert "https://physionet.org/content/mimici" in line and command in line and f"--dataset={name}-demo" in line


def test_run_log_prints_results_as_plain_numbers():
    """numpy 2's repr made RecBole-style result lines read OrderedDict([('recall@10', np.float64(0.0085)), ...])."""
    from collections import OrderedDict

    import numpy as np

    from recbole_ext.quick_start import _plain_line

    line = _plain_line(OrderedDict([("recall@10", np.float64(0.0085)), ("ddi_rate", 0.058660000000000004)]))
    assert line == "recall@10 0.0085    ddi_rate 0.05866"
    assert _plain_line(None) == "-"


@pytest.mark.parametrize("bundled,task", [("synth-ehr-small", "medrec"), ("synth-mm", "mmrec")])
def test_a_dataset_prepared_under_a_new_name_gets_its_task_defaults(bundled, task, tmp_path, monkeypatch,
                                                                     repo_root):
    """`prepare ... --name my-data` has no properties/dataset/my-data.yaml: the folder's kind picks the defaults
    (it used to be read as a RecBole 'general' dataset, which no medication or multimodal model accepts)."""
    import shutil

    from recbole_ext.config import build_config

    src, dst = repo_root / "dataset_atomic" / bundled, tmp_path / "my-data"
    shutil.copytree(src, dst)
    for f in dst.iterdir():
        if f.name.startswith(bundled + "."):
            f.rename(dst / f.name.replace(bundled, "my-data", 1))
    monkeypatch.setenv("RECBOLE_EXT_DATA", str(tmp_path))
    config, chosen = build_config("RETAIN" if task == "medrec" else "MambaRec", "my-data", {})
    assert chosen.name == task and config["task"] == task
    assert config["valid_metric"] == ("jaccard" if task == "medrec" else "recall@20")


@pytest.mark.parametrize("model,dataset", [("MambaRec", "synth-mm"), ("RETAIN", "mimic3-demo")])
def test_a_bundled_dataset_under_another_root_says_so(model, dataset, tmp_path, monkeypatch, capsys):
    """With RECBOLE_EXT_DATA elsewhere, synth-mm's fix used to send the user to MMRec's Google Drive."""
    monkeypatch.setenv("RECBOLE_EXT_DATA", str(tmp_path))
    assert main([f"--model={model}", f"--dataset={dataset}", "--epochs=1"]) == 2
    assert f"fix: '{dataset}' ships in " in _one_error_line(capsys)


def test_version_names_this_package_and_the_libraries_that_shape_results(capsys):
    from importlib.metadata import version

    assert main(["--version"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"recbole-ext {__version__} (")
    for dist in ("recbole", "torch", "numpy"):
        assert f"{dist} {version(dist)}" in line


def test_result_json_names_the_selected_epoch_and_the_library_versions(tmp_path, tiny_data, quiet):
    from importlib.metadata import version

    from recbole_ext.quick_start import run

    result = run("BPR", "tiny", {**quiet, "epochs": 4, "data_path": str(tiny_data), "topk": [10],
                                 "valid_metric": "recall@10", "runs_root": str(tmp_path / "runs")})
    saved = json.loads((Path(result.run_dir) / "result.json").read_text())
    assert saved["epochs_trained"] == 4 == len(saved["history"])
    [chosen] = [h for h in saved["history"] if h["epoch"] == saved["best_epoch"]]
    assert chosen["valid"] == saved["best_valid_result"]  # the epoch whose validation was selected
    scores = [h["valid_score"] for h in saved["history"]]
    assert scores.index(max(scores)) == saved["history"].index(chosen)  # the first of the best, as early stopping
    assert saved["versions"]["recbole-ext"] == __version__ and saved["versions"]["recbole"] == version("recbole")
