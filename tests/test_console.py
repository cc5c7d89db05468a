"""What a run prints: a short console by default (one line per epoch, the table, the summary), the full log in
run.log, no colour codes or progress bars in redirected output, the full log on the console with ``verbose``."""
from __future__ import annotations

import io
import json
import logging
import re
from pathlib import Path

import pytest

from recbole_ext import registry
from recbole_ext.cli import main, parse_train_args
from recbole_ext.quick_start import RunResult, run, run_summary
from recbole_ext.utils.console import console_handler
from tests.medrec_reference import MedLogReg

# one format for every trainer: RecBole's (general), MMRecTrainer (mmrec), MedRecTrainer (medrec)
EPOCH_LINE = re.compile(r"^epoch +(\d+)/(\d+)  train loss \S+(  valid \S+ \d+\.\d{4} ( |\*))?  "
                        r"\((\d+\.\d s|\d+ min \d\d s|\d+ h \d\d min)\)$")
EPOCHS = 2


@pytest.fixture
def medlogreg():
    registry.register_model(MedLogReg)


@pytest.mark.parametrize("model,dataset,extra", [
    ("BPR", "tiny", ["--topk=[10]", "--valid_metric=recall@10", "--train_batch_size=256"]),
    ("BPR", "synth-mm", []),
    ("MedLogReg", "synth-ehr-small", ["--patients_per_batch=32", "--learning_rate=0.05"]),
])
def test_a_default_run_prints_one_line_per_epoch_then_the_result(model, dataset, extra, tiny_data, medlogreg,
                                                                 tmp_path, capfd, one_thread):
    data = [f"--data_path={tiny_data}"] if dataset == "tiny" else []
    assert main([f"--model={model}", f"--dataset={dataset}", f"--epochs={EPOCHS}", *data, *extra]) == 0
    out, err = capfd.readouterr()  # not a terminal: no colour, no progress bars (show_progress is on by default)
    console = out + err
    assert "\x1b" not in console and "\r" not in console
    (run_dir,) = (tmp_path / "runs").iterdir()
    saved = json.loads((run_dir / "result.json").read_text())
    rows = len(saved["test_result"]) - sum(k.endswith("_std") for k in saved["test_result"])
    lines = [line for line in console.splitlines() if line.strip()]
    # the start line, the epoch lines, a title, the table (header, rule, rows), at most 7 summary lines
    assert len(lines) <= EPOCHS + rows + 11, console
    epoch_lines = [line for line in lines if line.startswith("epoch ")]
    matches = [EPOCH_LINE.match(line) for line in epoch_lines]
    assert len(epoch_lines) == EPOCHS and all(matches), epoch_lines
    improved = [int(m[1]) for m in matches if m[4] == "*"]
    # the selected epoch is the last one marked '*', 1-based on the console, 0-based in result.json
    assert re.search(rf"^best epoch +{improved[-1]} \(", out, re.M) and saved["best_epoch"] == improved[-1] - 1
    log = (run_dir / "run.log").read_text()
    assert "General Hyper Parameters" in log and "Trainable parameters" in log  # the config dump, the model
    assert all(line in log for line in epoch_lines)
    assert "General Hyper Parameters" not in console


def test_verbose_puts_the_full_log_on_the_console_too(tiny, tmp_path, capfd, one_thread):
    run("BPR", "tiny", {**tiny, "state": "INFO", "verbose": True, "runs_root": str(tmp_path / "runs")})
    err = capfd.readouterr().err
    assert "General Hyper Parameters" in err and "Trainable parameters" in err and "epoch 0 training" in err
    assert "\x1b" not in err
    assert len(err.splitlines()) > 60


@pytest.mark.parametrize("argv,verbose", [(["--verbose"], True), (["--verbose", "--epochs=1"], True),
                                          (["--verbose=False"], False), (["--verbose", "true"], True)])
def test_verbose_is_a_bare_flag_or_a_value(argv, verbose):
    _, _, config, _ = parse_train_args(["--model=BPR", "--dataset=ml-100k", *argv])
    assert config["verbose"] is verbose


class _Terminal(io.StringIO):
    def isatty(self):
        return True


@pytest.mark.parametrize("stream,coloured", [(io.StringIO(), False), (_Terminal(), True)])
def test_the_quiet_console_shows_progress_warnings_and_errors_in_colour_only_on_a_terminal(stream, coloured):
    from recbole.utils import set_color

    from recbole_ext.utils.console import PROGRESS

    logger = logging.getLogger("test_console.quiet")
    logger.propagate = False
    handler = console_handler(stream, verbose=False)
    logger.addHandler(handler)
    try:
        logger.info("config dump")
        logger.info(set_color("epoch 1/2", "green"), extra=PROGRESS)
        logger.warning("low memory")
        logger.error("failed")
    finally:
        logger.removeHandler(handler)
    lines = stream.getvalue().splitlines()
    assert [re.sub(r"\x1b\[[0-9;]*m", "", line) for line in lines] == \
        ["epoch 1/2", "warning: low memory", "error: failed"]
    assert ("\x1b[" in lines[0]) is coloured


def _result(**changes) -> RunResult:
    base = dict(model="BPR", dataset="ml-100k", task="general", run_dir="/elsewhere/runs/BPR-x",
                checkpoint="/elsewhere/runs/BPR-x/model.pth",
                config={"epochs": 50, "valid_metric": "MRR@10", "evaluate_test": True},
                best_valid_score=0.0556, best_valid_result={"mrr@10": 0.0556}, test_result={"mrr@10": 0.05},
                history=[{"epoch": e, "train_loss": 1.0, "valid": {}, "time_s": 1.0} for e in range(14)],
                wall_time_s=125.0, per_user_test={"users": ["196", "186"], "metrics": {}}, best_epoch=3,
                epochs_trained=14)
    base.update(changes)
    return RunResult(**base)


def _rows(text: str) -> dict:
    return {line[:13].strip(): line[13:].strip() for line in text.splitlines()}


def test_the_summary_says_why_training_stopped_and_what_to_run_next():
    rows = _rows(run_summary(_result()))
    assert rows["best epoch"] == "4 (valid mrr@10 0.0556)"
    assert rows["epochs"] == "14 of 50, early stopping: no better valid mrr@10 in the 10 epochs after epoch 4"
    assert rows["wall time"] == "2 min 05 s"
    assert rows["next"] == "python run.py recommend --checkpoint /elsewhere/runs/BPR-x --user 196"
    assert "±" not in rows
    full = _rows(run_summary(_result(epochs_trained=50, history=[{"epoch": 49}])))
    assert full["epochs"] == "50 of 50, reached epochs=50"
    nan = _rows(run_summary(_result(history=[{"epoch": e} for e in range(4)], epochs_trained=4)))
    assert nan["epochs"] == "4 of 50, stopped after epoch 4 (run.log says why)"
    pruned = _rows(run_summary(_result(stopped_at_epoch=6, checkpoint=None)))
    assert pruned["epochs"].endswith("pruned by the tuner after epoch 7") and "next" not in pruned


def test_the_summary_of_a_medication_run_explains_plus_minus_and_suggests_a_patient():
    rows = _rows(run_summary(_result(task="medrec", test_result={"jaccard": 0.5, "jaccard_std": 0.01},
                                     protocol={"test": "mean/std over 10 bootstrap samples"})))
    assert rows["±"] == "the test column is mean ± std (mean/std over 10 bootstrap samples)"
    assert rows["next"].endswith("--patient examples/patient.json")


class _EveryOtherEpochValidated:
    """The shape of a trainer's fit loop (RecBole's, MMRecTrainer's): validation only every ``eval_step`` epochs."""

    epochs, valid_metric = 3, "recall@20"

    def __init__(self, config, model):
        self.scores = [0.2]

    def _train_epoch(self, train_data, epoch_idx, show_progress=False):
        return 1.0 / (epoch_idx + 1)

    def _valid_epoch(self, valid_data, show_progress=False):
        score = self.scores.pop(0)
        return score, {"recall@20": score}

    def fit(self, train_data, valid_data=None):
        for epoch in range(self.epochs):
            self._train_epoch(train_data, epoch)
            if epoch % 2 == 1:
                self._valid_epoch(valid_data)


def test_an_epoch_without_validation_gets_its_line_too(caplog):
    from recbole_ext.training.history import with_history

    trainer = with_history(_EveryOtherEpochValidated)(None, None)
    with caplog.at_level(logging.INFO):
        trainer.fit(None)
    lines = [r.getMessage() for r in caplog.records if getattr(r, "console", False)]
    assert [re.sub(r"  \(.*\)$", "", line) for line in lines] == [
        "epoch 1/3  train loss 1.0000", "epoch 2/3  train loss 0.5000  valid recall@20 0.2000 *",
        "epoch 3/3  train loss 0.3333"]
    assert all(EPOCH_LINE.match(line) for line in lines)
