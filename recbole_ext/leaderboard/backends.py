"""Where runs execute: local spawned processes (default) or a Ray cluster (optional extra, imported lazily).

A backend takes run requests and calls ``on_start(request)`` / ``on_result(row)`` in the coordinating process,
which alone writes the store. Every run gets its own process, so a crash, an out-of-memory kill or a kill -9 of one
worker is recorded as that run's failure and the others go on.
"""
from __future__ import annotations

import multiprocessing as mp
import multiprocessing.connection
import os
import signal
from collections import deque
from pathlib import Path

from recbole_ext.errors import UserError
from recbole_ext.leaderboard import worker
from recbole_ext.utils.paths import PROJECT_ROOT

RAY_SITE_DIR = Path(__file__).resolve().parent / "ray_site"


_NO_ROW = object()


def crashed_row(request, reason: str, backend: str) -> dict:
    payload = request.to_payload()
    tuning = payload.pop("tuning", None) or {}
    return {**{k: v for k, v in payload.items() if k != "extra"},
            "phase": tuning.get("phase"), "study": tuning.get("study"), "trial": tuning.get("trial"),
            "status": "failed", "error": reason, "backend": backend, "library_versions": worker.library_versions(),
            "code_version": worker.code_version(), "finished_at": worker.now_iso()}


def _exit_reason(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        hint = " (out of memory, or killed)" if -exitcode == signal.SIGKILL else ""
        return f"worker process was killed by {name}{hint} before it returned a result"
    return f"worker process exited with code {exitcode} before it returned a result"


def threads_per_worker(workers: int) -> int:
    return max(1, (os.cpu_count() or 1) // max(1, workers))


def worker_payload(request, runs_dir: Path | None) -> dict:
    """The request plus where this attempt writes: its run folder (quick_start's run_dir) and its log."""
    payload = request.to_payload()
    if "show_progress" not in request.config_dict:  # per-batch bars are noise in a worker's log (not in the key)
        payload["extra"] = {**payload.get("extra", {}), "show_progress": False}
    if runs_dir is not None:
        payload["extra"] = {**payload.get("extra", {}), "run_dir": str(runs_dir / request.run_key)}
        payload["log_file"] = str(runs_dir / f"{request.run_key}.log")
    return payload


class LocalBackend:
    name = "local"

    def __init__(self, workers: int = 1, runs_dir: Path | None = None):
        self.runs_dir = runs_dir
        self.workers = max(1, int(workers))
        self.threads = threads_per_worker(self.workers)
        self.ctx = mp.get_context("spawn")

    def execute(self, requests, on_start, on_result):
        pending = deque(requests)
        running = {}  # sentinel -> [process, connection, request, row]
        try:
            while pending or running:
                while pending and len(running) < self.workers:
                    request = pending.popleft()
                    receiver, sender = self.ctx.Pipe(duplex=False)
                    process = self.ctx.Process(target=worker.process_main, name=f"lb-{request.run_key}",
                                               args=(worker_payload(request, self.runs_dir), sender, os.getpid(),
                                                     self.threads))
                    process.start()
                    sender.close()
                    running[process.sentinel] = [process, receiver, request, None]
                    on_start(request)
                by_conn = {entry[1]: entry for entry in running.values() if entry[3] is None}  # still to answer
                ready = mp.connection.wait(list(running) + list(by_conn), timeout=1.0)
                for obj in ready:
                    if obj in by_conn:
                        entry = by_conn[obj]
                        try:
                            entry[3] = obj.recv()
                        except (EOFError, OSError):  # died without answering: wait for its exit code only
                            entry[3] = _NO_ROW
                for obj in ready:
                    if obj in running:
                        process, receiver, request, row = running.pop(obj)
                        row = None if row is _NO_ROW else row
                        if row is None and receiver.poll():
                            try:
                                row = receiver.recv()
                            except (EOFError, OSError):
                                row = None
                        process.join()
                        receiver.close()
                        on_result(row if row is not None else crashed_row(request, _exit_reason(process.exitcode),
                                                                            self.name))
        finally:
            for process, receiver, _, _ in running.values():  # interrupted: stop what is still running
                process.kill()
                process.join()
                receiver.close()

    def close(self):
        pass


def _import_ray():
    try:
        import numpy as np

        if not hasattr(np, "bool8"):  # ray 2.6 still uses the alias numpy 2 removed
            np.bool8 = np.bool_
        import ray
    except ImportError as exc:
        raise UserError(f"the Ray backend needs the 'ray' extra ({exc})",
                        fix="pip install 'recbole-ext[ray]', or use --backend local") from None
    return ray


def _ray_task(payload: dict, threads: int) -> dict:
    return worker.execute(payload, backend="ray", threads=threads)


class RayBackend:
    name = "ray"

    def __init__(self, workers: int | None = None, address: str | None = None, runs_dir: Path | None = None):
        self.runs_dir = runs_dir
        self.ray = _import_ray()
        pythonpath = os.pathsep.join([str(RAY_SITE_DIR), str(PROJECT_ROOT)]
                                     + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])
        # Workers must import recbole_ext and get the numpy alias before ray's own imports (sitecustomize).
        runtime_env = {"env_vars": {"PYTHONPATH": pythonpath}}
        self.started_here = not self.ray.is_initialized()
        try:
            if address:
                self.ray.init(address=address, runtime_env=runtime_env, log_to_driver=False)
            else:
                self.ray.init(num_cpus=workers or os.cpu_count(), include_dashboard=False, runtime_env=runtime_env,
                              log_to_driver=False, _node_ip_address="127.0.0.1")  # a private instance
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise UserError(f"could not connect to Ray at {address or 'a new local instance'}: "
                            f"{' '.join(str(exc).split())[:300]}",
                            fix="start the cluster with 'ray start --head' and pass its address") from None
        cluster_cpus = int(self.ray.cluster_resources().get("CPU", 1))
        self.workers = max(1, int(workers or cluster_cpus))
        self.threads = max(1, cluster_cpus // self.workers)
        # max_calls=1: a fresh worker process per run, as with the local backend (contained crashes, own memory).
        self.remote = self.ray.remote(num_cpus=1, max_calls=1, max_retries=0)(_ray_task)

    def execute(self, requests, on_start, on_result):
        pending = deque(requests)
        running = {}
        try:
            while pending or running:
                while pending and len(running) < self.workers:
                    request = pending.popleft()
                    payload = worker_payload(request, self.runs_dir)
                    payload.pop("log_file", None)  # Ray keeps worker logs itself
                    running[self.remote.remote(payload, self.threads)] = request
                    on_start(request)
                done, _ = self.ray.wait(list(running), num_returns=1, timeout=1.0)
                for ref in done:
                    request = running.pop(ref)
                    try:
                        row = self.ray.get(ref)
                    except Exception as exc:  # worker died, node lost: that run failed, the others go on
                        row = crashed_row(request, f"Ray task failed: {type(exc).__name__}: "
                                                   f"{' '.join(str(exc).split())[:500]}", self.name)
                    on_result(row)
        finally:
            for ref in running:
                self.ray.cancel(ref, force=True)

    def close(self):
        if self.started_here:
            self.ray.shutdown()


def make_backend(name: str, workers: int | None, address: str | None, runs_dir: Path | None = None):
    if name == "local":
        if address:
            raise UserError("--address only applies to --backend ray", fix="drop --address or add --backend ray")
        return LocalBackend(workers or 1, runs_dir)
    if name == "ray":
        return RayBackend(workers, address, runs_dir)
    raise UserError(f"unknown backend {name!r}", fix="use --backend local or --backend ray")
