"""Shared by the leaderboard tests: tiny specs run with the deterministic stand-in run function."""
from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
FAKE = "recbole_ext.testing.fake_runs:run"


def write_spec(path: Path, **overrides) -> Path:
    spec = {"name": "t", "task": "medrec", "datasets": ["synth-ehr-small"], "seeds": 2,
            "models": ["A", {"name": "B", "grid": {"learning_rate": [0.1, 0.01]}}]}
    spec.update(overrides)
    path.write_text(yaml.safe_dump(spec))
    return path


def cli_env(tmp_path: Path, **extra) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env["RECBOLE_EXT_DATA"] = str(tmp_path / "data")
    env["RECBOLE_EXT_CACHE"] = str(tmp_path / "cache")
    env.update({k: str(v) for k, v in extra.items()})
    return env


def start_cli(spec: Path, out: Path, env: dict, *args) -> subprocess.Popen:
    """The leaderboard as a separate process (its own session, so a kill can target it or its whole group)."""
    cmd = [sys.executable, "-m", "recbole_ext.leaderboard.cli", str(spec), "--out", str(out), "--run-fn", FAKE,
           "--no-progress", *args]
    return subprocess.Popen(cmd, cwd=str(out.parent), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def db_rows(out: Path) -> list[dict]:
    path = out / "results.sqlite"
    if not path.exists():
        return []
    conn = sqlite3.connect(str(path), timeout=30)
    try:
        conn.row_factory = sqlite3.Row
        return [dict(r) for r in conn.execute("SELECT * FROM runs")]
    except sqlite3.OperationalError:  # table not created yet
        return []
    finally:
        conn.close()


def integrity(out: Path) -> str:
    conn = sqlite3.connect(str(out / "results.sqlite"), timeout=30)
    try:
        return conn.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        conn.close()


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead for our purposes
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state != "Z"
    except (FileNotFoundError, IndexError):
        return False


def marker_pids(markers: Path, suffix: str) -> list[int]:
    return [int(p.name.rsplit(".", 2)[-2]) for p in markers.glob(f"*{suffix}")]
