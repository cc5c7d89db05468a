"""Kill resilience with real SIGKILLs: of one worker, of the leaderboard process, of the whole process group.

Whatever is killed and whenever, the store holds only complete rows (or none), no worker outlives its leaderboard,
and the next invocation redoes exactly the runs without a row.
"""
from __future__ import annotations

import json
import os
import random
import signal
import time

from tests.test_leaderboard_helpers import (cli_env, db_rows, integrity, marker_pids, pid_alive, start_cli,
                                            write_spec)

REQUIRED = ("run_key", "status", "model", "dataset", "seed", "grid_id", "grid_point", "config_dict", "run_fn",
            "finished_at", "code_version", "library_versions")


def _wait(predicate, timeout=90.0, step=0.05):
    end = time.time() + timeout
    while time.time() < end:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    raise AssertionError("timed out waiting")


def _finish(proc, timeout=120):
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def _summary(out: str) -> dict:
    return json.loads(out.splitlines()[0])


def _check_rows_complete(out_dir):
    assert integrity(out_dir) == "ok"
    for row in db_rows(out_dir):
        assert all(row[c] is not None for c in REQUIRED), row
        if row["status"] == "ok":
            assert row["test_result"] and row["best_valid_score"] is not None and row["wall_time_s"] is not None


def test_sigkill_of_a_worker_is_that_runs_failure_and_is_redone(tmp_path):
    markers = tmp_path / "markers"
    markers.mkdir()
    spec = write_spec(tmp_path / "s.yaml", seeds=1, models=["A", "B"], config={"fake_sleep": 1.5})
    env = cli_env(tmp_path, RECBOLE_EXT_FAKE_MARKERS=markers)
    out = tmp_path / "out"
    proc = start_cli(spec, out, env, "--workers", "2")
    victim = _wait(lambda: marker_pids(markers, ".start"))[0]
    os.kill(victim, signal.SIGKILL)
    code, stdout, stderr = _finish(proc)
    assert code == 1, stderr[-2000:]
    rows = db_rows(out)
    failed = [r for r in rows if r["status"] == "failed"]
    assert len(rows) == 2 and len(failed) == 1, rows
    assert "SIGKILL" in failed[0]["error"]
    _check_rows_complete(out)
    code, stdout, stderr = _finish(start_cli(spec, out, env, "--workers", "2"))
    assert code == 0, stderr[-2000:]
    assert _summary(stdout)["executed"] == 1 and _summary(stdout)["skipped"] == 1
    assert {r["status"] for r in db_rows(out)} == {"ok"} and len(db_rows(out)) == 2


def test_sigkill_of_the_leaderboard_leaves_no_orphan_and_no_partial_row(tmp_path):
    markers = tmp_path / "markers"
    markers.mkdir()
    spec = write_spec(tmp_path / "s.yaml", seeds=4, models=["A"], config={"fake_sleep": 0.4})
    env = cli_env(tmp_path, RECBOLE_EXT_FAKE_MARKERS=markers)
    out = tmp_path / "out"
    proc = start_cli(spec, out, env, "--workers", "2")

    def running_after_a_commit():
        started, done = marker_pids(markers, ".start"), marker_pids(markers, ".done")
        busy = sorted(set(started) - set(done))
        return busy if db_rows(out) and busy else None

    busy = _wait(running_after_a_commit)
    os.kill(proc.pid, signal.SIGKILL)  # the leaderboard only: its workers must follow it
    proc.communicate(timeout=30)
    _wait(lambda: not any(pid_alive(p) for p in busy), timeout=15)
    _check_rows_complete(out)
    before = len(db_rows(out))
    assert 1 <= before < 4
    code, stdout, stderr = _finish(start_cli(spec, out, env, "--workers", "2"))
    assert code == 0, stderr[-2000:]
    assert _summary(stdout)["executed"] == 4 - before and _summary(stdout)["skipped"] == before
    assert len(db_rows(out)) == 4 and {r["status"] for r in db_rows(out)} == {"ok"}


def test_sigkill_of_the_process_group_at_random_moments(tmp_path):
    spec = write_spec(tmp_path / "s.yaml", seeds=3, models=["A"], config={"fake_sleep": 0.1})
    env = cli_env(tmp_path)
    out = tmp_path / "out"
    rng = random.Random(7)
    for _ in range(2):
        proc = start_cli(spec, out, env, "--workers", "2")
        time.sleep(rng.uniform(0.5, 4.0))  # start-up, store creation, runs in flight or commit
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:  # it had already finished
            pass
        proc.communicate(timeout=30)
        if (out / "results.sqlite").exists():
            _check_rows_complete(out)
    before = len(db_rows(out))
    code, stdout, stderr = _finish(start_cli(spec, out, env, "--workers", "2"))
    assert code == 0, stderr[-2000:]
    assert _summary(stdout)["executed"] == 3 - before
    assert len(db_rows(out)) == 3 and {r["status"] for r in db_rows(out)} == {"ok"}
