"""What runs inside a worker: import the run function, run one request, return a plain dict for the store.

The same function serves the local backend (one spawned process per run) and the Ray backend (one task per run),
so both record the same fields.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import importlib
import importlib.metadata
import math
import os
import platform
import resource
import shutil
import socket
import subprocess
import sys
import time
import traceback

from recbole_ext.utils.paths import PROJECT_ROOT

LIBRARIES = ("recbole-ext", "recbole", "torch", "numpy", "pandas", "scipy", "faiss-cpu", "torch-geometric", "ray")


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def code_version() -> str:
    """``git:<sha>[+dirty]`` of the checkout the package runs from, else ``recbole-ext==<version>``."""
    try:
        sha = subprocess.run(["git", "-C", str(PROJECT_ROOT), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10)
        if sha.returncode == 0 and sha.stdout.strip():
            dirty = subprocess.run(["git", "-C", str(PROJECT_ROOT), "status", "--porcelain", "--untracked-files=no"],
                                   capture_output=True, text=True, timeout=10)
            return f"git:{sha.stdout.strip()}" + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        return f"recbole-ext=={importlib.metadata.version('recbole-ext')}"
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def library_versions() -> dict:
    versions = {"python": platform.python_version(), "platform": platform.platform()}
    for name in LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def load_run_fn(path: str):
    module, _, attr = path.partition(":")
    if not module or not attr:
        raise ValueError(f"run function {path!r} must look like 'package.module:function'")
    return getattr(importlib.import_module(module), attr)


def _plain(value):
    """Make RunResult contents JSON-safe (tensors, numpy scalars, paths); NaN/inf become None."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if hasattr(value, "item") and getattr(value, "ndim", 0) == 0:
        return _plain(value.item())
    if hasattr(value, "tolist"):
        return _plain(value.tolist())
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return repr(value)


def _result_dict(result) -> dict:
    if dataclasses.is_dataclass(result):
        return {f.name: getattr(result, f.name) for f in dataclasses.fields(result)}
    if isinstance(result, dict):
        return dict(result)
    return dict(vars(result))


def _per_user(value) -> dict | None:
    """A run's per-user test values with lower-case metric names like ``test_result``; None when absent or not of
    the RunResult.per_user_test shape (a custom run function), so the report shows n/a instead of failing."""
    if not isinstance(value, dict) or not isinstance(value.get("users"), list) \
            or not isinstance(value.get("metrics"), dict):
        return None
    n = len(value["users"])
    metrics = {str(k).lower(): v for k, v in value["metrics"].items() if isinstance(v, list) and len(v) == n}
    return {"users": [str(u) for u in value["users"]], "metrics": metrics} if n and metrics else None


def _limit_threads(threads: int | None):
    if threads:
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            os.environ[var] = str(threads)


def execute(payload: dict, backend: str = "local", threads: int | None = None) -> dict:
    """Run one request and return the store row. Never raises for a failing run: the error is the result."""
    _limit_threads(threads)
    started = time.time()
    row = {k: payload[k] for k in ("run_key", "model", "dataset", "seed", "grid_id", "grid_point", "config_dict",
                                   "run_fn", "dataset_sha256", "ddi_sha256")}
    row.update(started_at=now_iso(), backend=backend, host=socket.gethostname(), code_version=code_version())
    tuning = payload.get("tuning") or {}
    row.update(phase=tuning.get("phase"), study=tuning.get("study"), trial=tuning.get("trial"))
    config = dict(payload["config_dict"])
    config.update(payload.get("extra") or {})
    if config.get("run_dir"):  # a killed earlier attempt may have left a partial run folder: start clean
        shutil.rmtree(config["run_dir"], ignore_errors=True)
    try:
        run_fn = load_run_fn(payload["run_fn"])
        if threads and "torch" in sys.modules:  # OMP_NUM_THREADS covers a torch imported later
            sys.modules["torch"].set_num_threads(threads)
        kwargs = {}
        if tuning.get("pruning"):
            from recbole_ext.leaderboard.tuning import pruning_callback

            kwargs["on_valid"] = pruning_callback(tuning)
        result = _plain(_result_dict(run_fn(payload["model"], payload["dataset"], config_dict=config, **kwargs)))
        effective = result.get("config") or {}
        row.update(
            status="ok",
            task=result.get("task"),
            valid_metric=str(effective.get("valid_metric", "")).lower() or None,
            valid_bigger=int(bool(effective.get("valid_metric_bigger", True))),
            best_valid_score=result.get("best_valid_score"),
            best_valid_result={k.lower(): v for k, v in (result.get("best_valid_result") or {}).items()},
            test_result={k.lower(): v for k, v in (result.get("test_result") or {}).items()},
            per_user_test=_per_user(result.get("per_user_test")),
            history=result.get("history") or [],
            effective_config=effective,
            protocol=result.get("protocol") or {},
            run_wall_time_s=result.get("wall_time_s"),
            run_peak_rss_mb=result.get("peak_rss_mb"),
            pruned=int(result.get("stopped_at_epoch") is not None),
        )
        if row["dataset_sha256"] is None and effective.get("data_path"):  # data found only once the run resolved it
            folder = str(effective["data_path"])  # RecBole's Config has joined the dataset name on already
            if os.path.isdir(folder):
                from recbole_ext.utils.hashing import dir_sha256

                row["dataset_sha256"] = dir_sha256(folder)
        protocol_ddi = row["protocol"].get("ddi_sha256") if isinstance(row["protocol"], dict) else None
        if protocol_ddi:
            row["ddi_sha256"] = protocol_ddi
        if row["best_valid_score"] is None:
            raise ValueError("the run returned no finite best_valid_score")
    except BaseException as exc:  # a failing run is a result, not a crash of the leaderboard
        if isinstance(exc, KeyboardInterrupt):
            raise
        from recbole_ext.errors import UserError

        message = exc.one_line() if isinstance(exc, UserError) else f"{type(exc).__name__}: {exc}"
        row.update(status="failed", error=" ".join(message.split())[:2000], traceback=traceback.format_exc()[-20000:])
    row["library_versions"] = library_versions()
    row["wall_time_s"] = time.time() - started
    row["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux
    row["finished_at"] = now_iso()
    return row


def _die_with_parent():
    """Ask Linux to SIGKILL this worker when its parent dies, so a killed leaderboard leaves no orphans."""
    try:
        import ctypes
        import signal

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


def process_main(payload: dict, conn, parent_pid: int, threads: int | None):
    """Entry point of a spawned local worker: one run, result sent back over the pipe, then exit."""
    _die_with_parent()
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)
    if payload.get("log_file"):  # RecBole logs and progress bars go to the run's log, not the leaderboard's console
        os.makedirs(os.path.dirname(payload["log_file"]), exist_ok=True)
        fd = os.open(payload["log_file"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
    row = execute(payload, backend="local", threads=threads)
    conn.send(row)
    conn.close()
