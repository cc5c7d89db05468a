"""Run a leaderboard spec: tune on validation, finish the chosen configurations on every seed, store each run.

Phase 1 runs every grid point on the tuning seeds; the grid point with the best mean validation score (over those
seeds, in the direction of the validation metric) is chosen per (model, dataset) from validation numbers only;
phase 2 runs the chosen point on the remaining seeds. Epochs are chosen inside each run by early stopping on
validation (``RunResult.best_valid_*``). Finished runs are skipped; failed runs are retried unless asked not to.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from recbole_ext.leaderboard import stats
from recbole_ext.leaderboard.backends import make_backend
from recbole_ext.leaderboard.plan import DEFAULT_RUN_FN, dataset_hashes, final_runs, tuning_runs
from recbole_ext.leaderboard.spec import LeaderboardSpec
from recbole_ext.leaderboard.store import ResultStore
from recbole_ext.utils.io import make_dirs

STORE_NAME = "results.sqlite"


class Progress:
    """One tqdm bar over the runs still to do, with done/running/failed counts; ETA from finished runs."""

    def __init__(self, total: int, skipped: int, enabled: bool = True):
        self.done = self.failed = self.running = 0
        self.skipped = skipped
        self.bar = tqdm(total=total, unit="run", desc="leaderboard", disable=not enabled, file=sys.stderr,
                        dynamic_ncols=True)
        self._show()

    def _show(self):
        self.bar.set_postfix_str(f"done={self.done} running={self.running} failed={self.failed} "
                                 f"skipped={self.skipped}", refresh=True)

    def add_total(self, n: int):
        self.bar.total += n
        self.bar.refresh()

    def started(self, request):
        self.running += 1
        self._show()

    def finished(self, row: dict):
        self.running -= 1
        if row["status"] == "ok":
            self.done += 1
        else:
            self.failed += 1
            tqdm.write(f"run failed: {row['model']}/{row['dataset']}/seed={row['seed']}: {row.get('error')}",
                       file=sys.stderr)
        self.bar.update(1)
        self._show()

    def close(self):
        self.bar.close()


@dataclass
class Outcome:
    store_path: Path
    requests: list = field(default_factory=list)   # every run of the spec, in plan order
    executed: int = 0
    skipped: int = 0
    failed: int = 0
    chosen: dict = field(default_factory=dict)     # (model, dataset) -> grid point


def run_spec(spec: LeaderboardSpec, out_dir: str | Path, workers: int = 1, backend: str = "local",
             address: str | None = None, run_fn: str = DEFAULT_RUN_FN, retry_failed: bool = True,
             progress: bool = True, execute_runs: bool = True) -> Outcome:
    """Execute what is missing (unless ``execute_runs`` is False: report-only) and return the plan."""
    out_dir = make_dirs(out_dir, "leaderboard output folder")
    hashes = {d: dataset_hashes(d, spec.dataset_config.get(d, {}).get("data_path", spec.config.get("data_path")))
              for d in spec.datasets}
    outcome = Outcome(store_path=out_dir / STORE_NAME)
    store = ResultStore(outcome.store_path)
    runner = None
    bar = None
    try:
        def todo(requests):
            ok = store.finished_keys("ok")
            failed = store.finished_keys("failed")
            keep = [r for r in requests if r.run_key not in ok and (retry_failed or r.run_key not in failed)]
            outcome.skipped += len(requests) - len(keep)
            return keep

        def execute(requests):
            nonlocal runner, bar
            requests = todo(requests)
            if not execute_runs:
                return
            if bar is None:
                bar = Progress(len(requests), outcome.skipped, enabled=progress)
            else:
                bar.skipped = outcome.skipped
                bar.add_total(len(requests))
            if not requests:
                return
            if runner is None:
                runs_dir = (out_dir / "runs").resolve()
                runs_dir.mkdir(exist_ok=True)
                ignore = runs_dir / ".gitignore"  # checkpoints and logs (hundreds of MB): never committed by accident
                if not ignore.exists():
                    ignore.write_text("*\n")
                runner = make_backend(backend, workers, address, runs_dir)

            def on_result(row):
                store.record(row)  # one transaction per finished run
                outcome.executed += 1
                outcome.failed += row["status"] != "ok"
                bar.finished(row)

            runner.execute(requests, bar.started, on_result)

        phase1 = tuning_runs(spec, hashes, run_fn)
        execute(phase1)
        outcome.chosen = stats.choose_configs(phase1, store.rows(r.run_key for r in phase1))
        phase2 = final_runs(spec, hashes, outcome.chosen, run_fn)
        execute(phase2)
        outcome.requests = phase1 + phase2
    finally:
        if bar is not None:
            bar.close()
        if runner is not None:
            runner.close()
        store.close()
    return outcome
