"""The Ray backend against a local Ray head started by the test (``ray start --head --block``, stopped after).

Skipped only when ray cannot be imported (the optional ``ray`` extra: ``pip install 'recbole-ext[ray]'``).
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.test_leaderboard_helpers import cli_env, db_rows, start_cli, write_spec


def _ray_import_error() -> str | None:
    """Import ray in a fresh interpreter, as the backend does (numpy alias first)."""
    code = "import numpy as np\nif not hasattr(np, 'bool8'): np.bool8 = np.bool_\nimport ray"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    if proc.returncode == 0:
        return None
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else f"exit code {proc.returncode}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def ray_head():
    error = _ray_import_error()
    if error:
        pytest.skip(f"ray is not importable here ({error}); install the extra: pip install 'recbole-ext[ray]'")
    ray_exe = Path(sys.executable).with_name("ray")
    port = _free_port()
    # Ray's unix socket paths must stay under 107 characters: pytest's tmp_path is too deep.
    temp_dir = tempfile.mkdtemp(prefix="rlb", dir="/tmp")
    head = subprocess.Popen([str(ray_exe), "start", "--head", f"--port={port}", "--node-ip-address=127.0.0.1",
                             "--num-cpus=2", "--include-dashboard=false", f"--temp-dir={temp_dir}", "--block"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline = time.time() + 120
        for line in head.stdout:  # '--block' prints this once the cluster is up
            if "will now block forever" in line or time.time() > deadline:
                break
        assert head.poll() is None, "ray start --head exited"
        yield f"127.0.0.1:{port}"
    finally:
        head.terminate()  # ray start --block stops the processes it started
        try:
            head.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
        try:  # anything of that session still alive (only what this test started)
            os.killpg(head.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_ray_backend_runs_the_same_runs_and_contains_crashes(tmp_path, ray_head):
    spec = write_spec(tmp_path / "s.yaml", seeds=2, models=["A", {"name": "Crash", "config": {"fake_crash": True}}])
    env = cli_env(tmp_path)
    out = tmp_path / "out"
    proc = start_cli(spec, out, env, "--backend", "ray", "--address", ray_head, "--workers", "2")
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 1, stderr[-3000:]
    rows = {(r["model"], r["seed"]): r for r in db_rows(out)}
    assert len(rows) == 4
    assert all(rows[("A", s)]["status"] == "ok" and rows[("A", s)]["backend"] == "ray" for s in (0, 1))
    assert all(rows[("Crash", s)]["status"] == "failed" and "Ray task failed" in rows[("Crash", s)]["error"]
               for s in (0, 1))
    # Run identity does not depend on the backend: the local backend skips what Ray finished.
    proc = start_cli(spec, out, env, "--workers", "2")
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 1 and '"executed": 2, "skipped": 2' in stdout, stderr[-3000:]
