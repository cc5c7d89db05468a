"""Data-parallel runs (torchrun, gloo on CPU) against one process: the same losses and metrics, one clear error when
a rank dies or hangs, and nothing written by ranks other than 0.

Each two-process run goes through the real launcher (``python -m torch.distributed.run``) and ``run.py``; the
one-process reference runs in this process with one intra-op thread, as torchrun's workers do (OMP_NUM_THREADS=1),
so the float reductions are the same.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _torchrun(args: list[str], cwd: Path, n: int = 2, timeout: float = 240) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}",
           str(ROOT / "run.py"), *args]
    out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    return out


def _args(config: dict) -> list[str]:
    return [f"--{k}={v!r}" if isinstance(v, str) else f"--{k}={v}" for k, v in config.items()]


def _two_process_result(tmp_path: Path, model: str, dataset: str, config: dict) -> tuple[dict, dict]:
    run_dir = tmp_path / f"{model}-two"
    _torchrun([f"--model={model}", f"--dataset={dataset}", f"--run_dir={run_dir}", *_args(config)], tmp_path)
    result = json.loads((run_dir / "result.json").read_text())
    per_user = run_dir / "per_user_test.json"
    return result, json.loads(per_user.read_text()) if per_user.exists() else {}


def _one_process_result(tmp_path: Path, model: str, dataset: str, config: dict) -> tuple[dict, dict]:
    from recbole_ext.quick_start import run

    result = run(model, dataset, config_dict={**config, "run_dir": str(tmp_path / f"{model}-one")})
    return result.to_dict(), result.per_user_test


def _losses(result: dict) -> np.ndarray:
    return np.array([h["train_loss"] for h in result["history"]])


def _valid(result: dict) -> list[dict]:
    return [h["valid"] for h in result["history"]]


QUIET = {"show_progress": False, "epochs": 3}


@pytest.mark.usefixtures("one_thread")
def test_mambarec_replicated_loss_is_bitwise_one_process(tmp_path):
    """MambaRec's loss couples the batch (InfoNCE, MMD): every rank computes the global batch's loss, so training
    and every metric (sharded evaluation, gathered) equal one process exactly, per-user values included."""
    config = {**QUIET, "train_batch_size": 256, "eval_users_per_batch": 64}  # several batches per rank
    one, one_users = _one_process_result(tmp_path, "MambaRec", "synth-mm", config)
    two, two_users = _two_process_result(tmp_path, "MambaRec", "synth-mm", config)
    assert len(two["history"]) == 3
    assert _losses(two).tolist() == _losses(one).tolist()
    assert _valid(two) == _valid(one)
    assert two["test_result"] == one["test_result"] and two["best_epoch"] == one["best_epoch"]
    assert two_users == one_users and len(two_users["users"]) > 100


@pytest.mark.usefixtures("one_thread")
def test_bpr_general_task_rows_sharded_same_trajectory(tmp_path, tiny):
    """RecBole's own trainer and BPR: each rank takes half of every global batch; weighted by rows, the averaged
    gradient is the global batch's, so the losses match one process to float rounding and so do the metrics."""
    config = {**QUIET, "data_path": tiny["data_path"], "topk": [10], "valid_metric": "recall@10",
              "metrics": ["Recall", "NDCG"], "learning_rate": 0.01,
              "train_batch_size": 333, "eval_batch_size": 800}  # unequal shards; 10 users per evaluation batch
    one, _ = _one_process_result(tmp_path, "BPR", "tiny", config)
    two, _ = _two_process_result(tmp_path, "BPR", "tiny", config)
    np.testing.assert_allclose(_losses(two), _losses(one), rtol=1e-6)
    for key, value in one["test_result"].items():
        assert two["test_result"][key] == pytest.approx(value, abs=1e-4), key
    assert "loss mode row_mean" in (tmp_path / "BPR-two" / "run.log").read_text()


@pytest.mark.usefixtures("one_thread")
def test_cafemed_visits_sharded_same_trajectory(tmp_path):
    """The medication trainer: patients sharded, each rank's loss weighted by its visits; without dropout (whose
    masks one process draws for the whole batch) the losses match one process to float rounding."""
    config = {**QUIET, "patients_per_batch": 8, "dropout_prob": 0.0}
    one, _ = _one_process_result(tmp_path, "CafeMed", "synth-ehr-small", config)
    two, _ = _two_process_result(tmp_path, "CafeMed", "synth-ehr-small", config)
    np.testing.assert_allclose(_losses(two), _losses(one), rtol=1e-5)
    for key, value in one["test_result"].items():
        assert two["test_result"][key] == pytest.approx(value, abs=2e-3), key


@pytest.mark.usefixtures("one_thread")
def test_cafemed_replicated_evaluation_is_bitwise_one_process(tmp_path):
    """With the loss replicated, training is bitwise one process's (dropout included), which makes the sharded,
    gathered medication evaluation checkable exactly: bootstrap means and stds, per-patient values."""
    config = {**QUIET, "epochs": 2, "patients_per_batch": 8, "eval_patients_per_batch": 7}
    one, one_users = _one_process_result(tmp_path, "CafeMed", "synth-ehr-small", config)
    two, two_users = _two_process_result(tmp_path, "CafeMed", "synth-ehr-small",
                                         {**config, "distributed_loss": "replicated"})
    assert _losses(two).tolist() == _losses(one).tolist()
    assert _valid(two) == _valid(one)
    assert two["test_result"] == one["test_result"] and "jaccard_std" in two["test_result"]
    assert two_users == one_users


def test_rank_other_than_zero_writes_nothing(tmp_path):
    """Only rank 0 writes: one run directory (with its tensorboard folder), nothing in the working directory."""
    out = _torchrun(["--model=BPR", "--dataset=synth-mm", "--epochs=1", "--runs_root=runs"], tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != ".cache") == ["runs"]  # .cache: $RECBOLE_EXT_CACHE
    (run_dir,) = list((tmp_path / "runs").iterdir())
    assert {"result.json", "model.pth", "run.log", "log_tensorboard", "status.json"} <= \
        {p.name for p in run_dir.iterdir()}
    assert out.stdout.count("BPR on synth-mm (mmrec)") == 1  # the result table is printed once


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_rank(rank: int, port: int, cwd: Path, extra: list[str]) -> subprocess.Popen:
    env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2",
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(ROOT / "run.py"), "--model=BPR", "--dataset=synth-mm", "--epochs=100000",
           "--stopping_step=100000", "--resume_every=0", f"--runs_root={cwd / 'runs'}", *extra]
    return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_epochs(cwd: Path, proc: subprocess.Popen, limit: float = 120) -> None:
    deadline = time.time() + limit
    while time.time() < deadline:
        logs = list((cwd / "runs").glob("*/run.log")) if (cwd / "runs").exists() else []
        if logs and logs[0].read_text().count("train loss") >= 2:  # two epochs logged: training is under way
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.2)
    raise AssertionError("training did not start")


@pytest.mark.parametrize("how", ["dies", "hangs"])
def test_a_failed_rank_fails_the_run_with_one_line(tmp_path, how):
    """Rank 1 killed (a dead peer) or stopped (a hung peer, caught by dist_timeout): rank 0 does not hang; it exits
    with status 2 and one error line naming the distributed failure."""
    port = _free_port()
    extra = ["--dist_timeout=8"]
    rank0 = _start_rank(0, port, tmp_path, extra)
    rank1 = _start_rank(1, port, tmp_path, extra)
    try:
        _wait_for_epochs(tmp_path, rank0)
        os.kill(rank1.pid, signal.SIGKILL if how == "dies" else signal.SIGSTOP)
        started = time.time()
        _, err = rank0.communicate(timeout=90)
        waited = time.time() - started
    finally:
        for proc in (rank0, rank1):
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
    assert rank0.returncode == 2, err[-3000:]
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "distributed run failed" in lines[0], err[-3000:]
    assert "Traceback" not in err
    assert waited < 60
    status = json.loads(next((tmp_path / "runs").glob("*/status.json")).read_text())
    assert status["state"] == "failed"


# ---- the pieces, in this process ------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [0, 1, 5, 7, 64])
@pytest.mark.parametrize("world", [1, 2, 3])
def test_shards_cover_every_row_once_in_order(n, world):
    from recbole_ext.training.distributed import shard_range

    bounds = [shard_range(n, r, world) for r in range(world)]
    assert bounds[0][0] == 0 and bounds[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))  # contiguous, in rank order
    sizes = [stop - start for start, stop in bounds]
    assert max(sizes) - min(sizes) <= 1


def test_launch_read_from_torchrun_environment():
    from recbole_ext.errors import UserError
    from recbole_ext.utils.distributed import Launch, launch_from_environment

    base = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}
    assert launch_from_environment({}) is None
    assert launch_from_environment({**base, "WORLD_SIZE": "1", "RANK": "0"}) is None  # torchrun with one process
    assert launch_from_environment({**base, "WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1"}) == Launch(3, 4, 1)
    for bad in ({**base, "WORLD_SIZE": "two"}, {**base, "WORLD_SIZE": "2", "RANK": "2"},
                {"WORLD_SIZE": "2", "RANK": "0"}):
        with pytest.raises(UserError):
            launch_from_environment(bad)


def test_loss_modes_of_the_zoo():
    """Row-mean sharding only where the loss is a mean over rows; everything else (and anything undeclared) is
    replicated, which is exact for any loss."""
    from recbole.model.general_recommender import BPR, NeuMF

    from recbole_ext.errors import UserError
    from recbole_ext.models.medrec.cafemed import CafeMed
    from recbole_ext.models.medrec.context_adapter import MedContext
    from recbole_ext.models.multimodal.lattice import LATTICE
    from recbole_ext.models.multimodal.mambarec import MambaRec
    from recbole_ext.training.distributed import has_unused_parameters, loss_mode

    def bare(cls):
        return cls.__new__(cls)

    assert loss_mode(bare(BPR)) == "row_mean" and loss_mode(bare(CafeMed)) == "row_mean"
    assert loss_mode(bare(MambaRec)) == "replicated" and loss_mode(bare(MedContext)) == "replicated"
    assert loss_mode(bare(NeuMF)) == "replicated"  # a built-in nobody checked
    assert loss_mode(bare(CafeMed), {"distributed_loss": "replicated"}) == "replicated"
    with pytest.raises(UserError):
        loss_mode(bare(MambaRec), {"distributed_loss": "row_mean"})  # forcing row_mean is never safe
    assert has_unused_parameters(bare(LATTICE)) and not has_unused_parameters(bare(MambaRec))
    assert has_unused_parameters(bare(NeuMF)) and not has_unused_parameters(bare(BPR))


def test_resume_is_refused_under_torchrun(monkeypatch, tmp_path):
    from recbole_ext.errors import UserError
    from recbole_ext.quick_start import resume

    for key, value in {"WORLD_SIZE": "2", "RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1"}.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(UserError, match="resume runs in one process"):
        resume(tmp_path)
