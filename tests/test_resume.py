"""Interrupted runs: status.json says so, last.pth holds the state after the last finished epoch, and
``python run.py resume RUN_DIR`` continues to exactly the result of an uninterrupted run with the same seed.

Each track (RecBole's Trainer, MMRecTrainer, MedRecTrainer) is interrupted in the middle of an epoch (Ctrl-C raised
from the model's loss once the loader has drawn the epoch's shuffle and negatives), resumed, and compared with an
uninterrupted run: every history value, the best epoch, the validation and test numbers and model.pth's weights
must be equal (==), on one torch thread. One more run is interrupted during its test evaluation, after training.
"""
from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
import torch

import recbole_ext
from recbole_ext import checkpoint
from recbole_ext.cli import main as cli_main
from recbole_ext.errors import UserError
from recbole_ext.quick_start import resume, run
from recbole_ext.registry import model_class
from recbole_ext.run_status import RESUME_FILE, RunInterrupted, read_status, write_status


def ctrl_c(*args, **kwargs):
    raise KeyboardInterrupt


def ids_changed(*args, **kwargs):
    raise UserError("the user ids of dataset 'tiny' differ from those the checkpoint was trained on")


def interrupt_after_epoch(monkeypatch, model: str, epoch: int):
    """``on_valid`` that arms a Ctrl-C for the first training batch after validation of ``epoch``: the next epoch
    stops mid-way, after its loader has drawn (so the random state has moved past the saved one)."""
    armed = []
    cls = model_class(model)
    loss = cls.calculate_loss

    def calculate_loss(self, *args, **kwargs):
        if armed:
            raise KeyboardInterrupt
        return loss(self, *args, **kwargs)

    monkeypatch.setattr(cls, "calculate_loss", calculate_loss)
    return lambda e, score, bigger: armed.append(e) if e == epoch else None


def without_times(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in entry.items() if k != "time_s"} for entry in history]


def assert_same_run(resumed, uninterrupted) -> None:
    assert without_times(resumed.history) == without_times(uninterrupted.history)
    assert (resumed.best_epoch, resumed.epochs_trained) == (uninterrupted.best_epoch, uninterrupted.epochs_trained)
    assert resumed.best_valid_score == uninterrupted.best_valid_score
    assert resumed.best_valid_result == uninterrupted.best_valid_result
    assert resumed.test_result == uninterrupted.test_result and resumed.test_result
    assert resumed.per_user_test == uninterrupted.per_user_test
    got = torch.load(resumed.checkpoint, weights_only=True)["state_dict"]
    want = torch.load(uninterrupted.checkpoint, weights_only=True)["state_dict"]
    assert got.keys() == want.keys()
    assert all(torch.equal(got[k], want[k]) for k in want)
    folder = Path(resumed.run_dir)
    assert read_status(folder)["state"] == "complete" and not (folder / RESUME_FILE).exists()
    stored = json.loads((folder / "result.json").read_text())
    assert stored["test_result"] == uninterrupted.test_result and stored["best_epoch"] == uninterrupted.best_epoch


def interrupted_then_resumed(monkeypatch, model, dataset, config, interrupt_after: int, run_dir: Path):
    """Run until the Ctrl-C in epoch ``interrupt_after + 1``, check what the folder says, then resume it."""
    with monkeypatch.context() as patch:
        with pytest.raises(RunInterrupted) as stopped:
            run(model, dataset, {**config, "run_dir": str(run_dir)},
                on_valid=interrupt_after_epoch(patch, model, interrupt_after))
    resumes_at = interrupt_after + 1  # 0-based, so also the finished epochs: the console's number of the last one
    assert str(stopped.value) == f"interrupted after epoch {resumes_at}; resume with: python run.py resume {run_dir}"
    status = read_status(run_dir)
    assert (status["state"], status["epochs_done"], status["resume_from_epoch"]) == \
        ("interrupted", resumes_at, resumes_at)
    assert (run_dir / RESUME_FILE).is_file() and not (run_dir / "result.json").exists()
    return recbole_ext.resume(run_dir)  # the package-level entry


def test_general_model_resumed_through_the_cli_equals_uninterrupted_run(tiny, one_thread, tmp_path, monkeypatch,
                                                                        capsys):
    # BPR under RecBole's own Trainer.fit, loaders and negative sampler (shuffled training data)
    config = {**tiny, "epochs": 4, "seed": 7}
    calls, stop_at = [], []
    bpr = model_class("BPR")
    loss = bpr.calculate_loss

    def calculate_loss(self, interaction):  # counts training batches; Ctrl-C at the call numbered in stop_at
        calls.append(1)
        if len(calls) in stop_at:
            raise KeyboardInterrupt
        return loss(self, interaction)

    monkeypatch.setattr(bpr, "calculate_loss", calculate_loss)
    full = run("BPR", "tiny", {**config, "run_dir": str(tmp_path / "full")})
    batches = len(calls) // config["epochs"]
    assert batches >= 2
    calls.clear()
    stop_at.append(2 * batches + 2)  # the second batch of epoch 2
    run_dir = tmp_path / "stopped"
    args = [f"--{k}={v}" for k, v in config.items()]
    assert cli_main(["--model=BPR", "--dataset=tiny", f"--run_dir={run_dir}", *args]) == 130
    assert capsys.readouterr().err.strip().endswith(f"error: interrupted after epoch 2; resume with: python run.py "
                                                    f"resume {run_dir}")
    assert cli_main(["resume", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "BPR on tiny (general), resumed" in out and "run directory  " in out  # the table and the summary
    stored = json.loads((run_dir / "result.json").read_text())
    assert without_times(stored["history"]) == without_times(full.history)
    assert (stored["best_valid_result"], stored["test_result"]) == (full.best_valid_result, full.test_result)
    got = torch.load(run_dir / "model.pth", weights_only=True)["state_dict"]
    assert all(torch.equal(got[k], v) for k, v in torch.load(full.checkpoint, weights_only=True)["state_dict"].items())
    assert cli_main(["resume", str(run_dir)]) == 2  # complete now
    assert "is complete; there is nothing to resume" in capsys.readouterr().err


def test_interrupt_during_the_test_evaluation_resumes_without_training_again(tiny, one_thread, tmp_path,
                                                                              monkeypatch):
    # training is over (its epochs spent): the resume tests the kept best weights (epoch 0 here) and must not let
    # RecBole's fit overwrite model.pth with the last epoch's weights; or, with --epochs, it trains on from there
    from recbole_ext.evaluation import per_user

    config = {**tiny, "epochs": 4, "seed": 7}
    full = run("BPR", "tiny", {**config, "run_dir": str(tmp_path / "full")})
    assert full.best_epoch < config["epochs"] - 1
    with monkeypatch.context() as patch:
        patch.setattr(per_user, "evaluate_per_user", ctrl_c)
        with pytest.raises(RunInterrupted, match="interrupted after epoch 4; resume with"):
            run("BPR", "tiny", {**config, "run_dir": str(tmp_path / "stopped")})
        with pytest.raises(RunInterrupted, match="interrupted after epoch 2; resume with"):
            run("BPR", "tiny", {**config, "epochs": 2, "run_dir": str(tmp_path / "short")})
    with monkeypatch.context() as patch:  # a user mistake met while resuming leaves the run as resumable as it was
        patch.setattr(checkpoint, "check_id_maps", ids_changed)
        with pytest.raises(UserError, match="ids of dataset 'tiny' differ"):
            resume(tmp_path / "stopped")
    assert read_status(tmp_path / "stopped")["state"] == "interrupted"
    assert_same_run(resume(tmp_path / "stopped"), full)
    assert cli_main(["resume", str(tmp_path / "short"), "--epochs", "4"]) == 0
    longer = json.loads((tmp_path / "short" / "result.json").read_text())
    assert without_times(longer["history"]) == without_times(full.history)
    assert (longer["test_result"], longer["config"]["epochs"]) == (full.test_result, 4)


def test_multimodal_model_resumed_equals_uninterrupted_run(one_thread, tmp_path, monkeypatch):
    # MMRecTrainer's own fit loop: its per-epoch LR schedule (halving each epoch, so a lost schedule shows in the
    # losses of the second epoch after the resume) and its early-stopping count (a rate too small to move the
    # validation score: epochs 1-3 tie with epoch 0, so training stops after epoch 3 only if the count kept over
    # the interruption after epoch 1 holds)
    config = {"epochs": 5, "seed": 11, "state": "ERROR", "show_progress": False, "learning_rate": 1e-6,
              "learning_rate_scheduler": [0.5, 1.0], "stopping_step": 2}
    full = run("MambaRec", "synth-mm", {**config, "run_dir": str(tmp_path / "full")})
    assert (full.epochs_trained, full.best_epoch) == (4, 0)
    resumed = interrupted_then_resumed(monkeypatch, "MambaRec", "synth-mm", config, 1, tmp_path / "stopped")
    assert_same_run(resumed, full)


def test_medrec_model_resumed_equals_uninterrupted_run(one_thread, tmp_path, monkeypatch):
    # MedRecTrainer under RecBole's fit; shuffled patients draw from MedRecDataLoader's own RandomState
    config = {"epochs": 3, "seed": 5, "state": "ERROR", "show_progress": False, "medrec_shuffle": True}
    full = run("RETAIN", "synth-ehr-small", {**config, "run_dir": str(tmp_path / "full")})
    resumed = interrupted_then_resumed(monkeypatch, "RETAIN", "synth-ehr-small", config, 0, tmp_path / "stopped")
    assert_same_run(resumed, full)


def test_failure_marks_failed_keeps_the_folder_and_can_be_resumed(tiny, tmp_path, monkeypatch):
    calls = []
    bpr = model_class("BPR")
    loss = bpr.calculate_loss

    def breaks_in_epoch_1(self, interaction):  # a crash (not Ctrl-C) after epoch 0 was saved
        if calls:
            raise RuntimeError("the loss blew up\nsecond line")
        return loss(self, interaction)

    with monkeypatch.context() as patch:
        patch.setattr(bpr, "calculate_loss", breaks_in_epoch_1)
        with pytest.raises(RuntimeError):
            run("BPR", "tiny", {**tiny, "epochs": 2, "run_dir": str(tmp_path / "r")},
                on_valid=lambda epoch, score, bigger: calls.append(epoch))
    assert read_status(tmp_path / "r") == {"state": "failed", "error": "RuntimeError: the loss blew up",
                                           "epochs_done": 1, "resume_from_epoch": 1}
    assert resume(tmp_path / "r").epochs_trained == 2  # once the cause is fixed, a failed run goes on too
    assert read_status(tmp_path / "r")["state"] == "complete"
    # a user mistake before training still leaves nothing behind
    with pytest.raises(UserError):
        run("BPR", "tiny", {**tiny, "topk": [500], "run_dir": str(tmp_path / "u")})
    assert not (tmp_path / "u").exists()


def test_interrupt_before_any_saved_epoch_is_said_and_not_resumable(tiny, tmp_path, monkeypatch):
    monkeypatch.setattr(model_class("BPR"), "calculate_loss", ctrl_c)
    with pytest.raises(KeyboardInterrupt, match=r"interrupted before any epoch was saved for resuming \(0 finished\)"):
        run("BPR", "tiny", {**tiny, "run_dir": str(tmp_path / "r")})
    assert read_status(tmp_path / "r")["state"] == "interrupted"
    with pytest.raises(UserError, match="has no resume state"):
        resume(tmp_path / "r")


def test_refusals(tmp_path):
    with pytest.raises(UserError, match="is not a folder"):
        resume(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="is not a run directory"):
        resume(tmp_path / "empty")
    live = tmp_path / "live"
    live.mkdir()
    write_status(live, "running", pid=os.getppid(), host=socket.gethostname())
    with pytest.raises(UserError, match="is still running"):
        resume(live)
    write_status(live, "running", pid=2 ** 22 + 12345, host=socket.gethostname())  # no such process
    with pytest.raises(UserError, match="has no resume state"):  # stale: past the liveness check
        resume(live)
    # a checkpoint without the resume entry (model.pth copied over last.pth) is not a resume state
    torch.save({"format": checkpoint.FORMAT, "model": "BPR", "dataset": "tiny", "external_config": {},
                "state_dict": {}}, live / RESUME_FILE)
    with pytest.raises(UserError, match="holds no resume state"):
        resume(live)


def test_ctrl_c_between_the_resume_state_and_the_status_waits_for_both(tiny, tmp_path, monkeypatch):
    """A Ctrl-C that arrives while last.pth is being written is acted on once status.json names the same epoch, so
    the status never says fewer epochs than the resume state holds."""
    import os
    import signal

    from recbole_ext.training.resume_state import EpochResumeState

    save = EpochResumeState.save

    def save_then_ctrl_c(self, epoch):
        save(self, epoch)
        if epoch == 1:
            os.kill(os.getpid(), signal.SIGINT)  # as if typed now, before the status is written

    monkeypatch.setattr(EpochResumeState, "save", save_then_ctrl_c)
    # a process started in the background (nohup, `cmd &`, some CI runners) inherits SIGINT ignored; Ctrl-C at a
    # terminal reaches Python's KeyboardInterrupt handler, which is what this test is about
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(RunInterrupted, match="interrupted after epoch 2; resume with"):
            run("BPR", "tiny", {**tiny, "epochs": 4, "run_dir": str(tmp_path / "r")})
    finally:
        signal.signal(signal.SIGINT, previous)
    status = read_status(tmp_path / "r")
    assert (status["state"], status["epochs_done"], status["resume_from_epoch"]) == ("interrupted", 2, 2)


def test_model_with_two_optimisers_resumed_equals_uninterrupted_run(one_thread, tmp_path, monkeypatch):
    # RecVAE under the MMRec protocol: RecBole's RecVAETrainer alternates an encoder and a decoder Adam and points
    # `optimizer` at either; both moments must come back (before, the resume failed on the optimiser's groups)
    config = {"epochs": 2, "seed": 7, "state": "ERROR", "show_progress": False}
    full = run("RecVAE", "synth-mm", {**config, "run_dir": str(tmp_path / "full")})
    resumed = interrupted_then_resumed(monkeypatch, "RecVAE", "synth-mm", config, 0, tmp_path / "stopped")
    assert_same_run(resumed, full)
