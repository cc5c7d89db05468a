"""Run a leaderboard spec: tune on validation, finish the chosen configurations on every seed, store each run.

A tuned board (``tuning:``) runs one Optuna study per (model, dataset) with the same budget for every model
(recbole_ext/leaderboard/tuning.py), then the best trial's configuration on every seed of the spec. A grid board's
phase 1 runs every grid point on the tuning seeds; the grid point with the best mean validation score (over those
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
    final_requests: list = field(default_factory=list)  # the runs the tables are built from
    studies: list = field(default_factory=list)    # tuning.StudyOutcome of a tuned board


class _Execution:
    """The runs of one ``run_spec`` call: drops what the store already holds, keeps the progress bar's count, starts
    the backend on first need and records every result in the store as it comes."""

    def __init__(self, store: ResultStore, outcome: Outcome, out_dir: Path, workers: int, backend: str,
                 address: str | None, retry_failed: bool, progress: bool, execute_runs: bool):
        self.store, self.outcome, self.out_dir = store, outcome, out_dir
        self.workers, self.backend, self.address = workers, backend, address
        self.retry_failed, self.progress, self.execute_runs = retry_failed, progress, execute_runs
        self.runner = None
        self.bar = None

    def todo(self, requests: list) -> list:
        """The requests not finished yet (failed ones too unless retry_failed is off); the others count as skipped."""
        ok = self.store.finished_keys("ok")
        failed = self.store.finished_keys("failed")
        keep = [r for r in requests if r.run_key not in ok and (self.retry_failed or r.run_key not in failed)]
        self.outcome.skipped += len(requests) - len(keep)
        return keep

    def announce(self, n: int) -> None:
        """``n`` more runs to come (a tuned board's trials, counted before they are asked for)."""
        if self.bar is None:
            self.bar = Progress(n, self.outcome.skipped, enabled=self.progress)
        else:
            self.bar.add_total(n)

    def _count(self, requests: list) -> None:
        # a tuned board's trials were counted up front by announce(); every other request is new to the bar
        new = [] if any(r.tuning.get("phase") == "tune" for r in requests) else requests
        if self.bar is None:
            self.bar = Progress(len(new), self.outcome.skipped, enabled=self.progress)
        else:
            self.bar.skipped = self.outcome.skipped
            self.bar.add_total(len(new))

    def _start_backend(self) -> None:
        runs_dir = (self.out_dir / "runs").resolve()
        runs_dir.mkdir(exist_ok=True)
        ignore = runs_dir / ".gitignore"  # checkpoints and logs (hundreds of MB): never committed by accident
        if not ignore.exists():
            ignore.write_text("*\n")
        self.runner = make_backend(self.backend, self.workers, self.address, runs_dir)

    def _on_result(self, row: dict) -> None:
        self.store.record(row)  # one transaction per finished run
        self.outcome.executed += 1
        self.outcome.failed += row["status"] != "ok"
        self.bar.finished(row)

    def execute(self, requests: list) -> None:
        """Run the requests not finished yet (nothing when execute_runs is off: a report from the store)."""
        requests = self.todo(requests)
        if not self.execute_runs:
            return
        self._count(requests)
        if not requests:
            return
        if self.runner is None:
            self._start_backend()
        self.runner.execute(requests, self.bar.started, self._on_result)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.runner is not None:
            self.runner.close()


def _choose(spec: LeaderboardSpec, hashes: dict, execution: _Execution, run_fn: str) -> list:
    """Fill ``outcome.chosen`` (and a tuned board's ``outcome.studies``) from validation; returns the grid board's
    phase-1 requests (none for a tuned board, whose trials are not final runs)."""
    outcome = execution.outcome
    if spec.tuning is not None:
        from recbole_ext.leaderboard.tuning import tune

        outcome.studies = tune(spec, hashes, execution.store, execution.execute, run_fn,
                               progress=execution.announce if execution.progress else None,
                               execute_runs=execution.execute_runs)
        outcome.chosen = {(o.model, o.dataset): o.chosen for o in outcome.studies if o.chosen is not None}
        return []
    phase1 = tuning_runs(spec, hashes, run_fn)
    execution.execute(phase1)
    outcome.chosen = stats.choose_configs(phase1, execution.store.rows(r.run_key for r in phase1))
    return phase1


def run_spec(spec: LeaderboardSpec, out_dir: str | Path, workers: int = 1, backend: str = "local",
             address: str | None = None, run_fn: str = DEFAULT_RUN_FN, retry_failed: bool = True,
             progress: bool = True, execute_runs: bool = True, final: bool = True) -> Outcome:
    """Execute what is missing (unless ``execute_runs`` is False: report-only) and return the plan; ``final``
    False stops a tuned board after its studies (the final runs are planned, not run)."""
    out_dir = make_dirs(out_dir, "leaderboard output folder")
    hashes = {d: dataset_hashes(d, spec.dataset_config.get(d, {}).get("data_path", spec.config.get("data_path")))
              for d in spec.datasets}
    outcome = Outcome(store_path=out_dir / STORE_NAME)
    store = ResultStore(outcome.store_path)
    execution = _Execution(store, outcome, out_dir, workers, backend, address, retry_failed, progress, execute_runs)
    try:
        phase1 = _choose(spec, hashes, execution, run_fn)
        phase2 = final_runs(spec, hashes, outcome.chosen, run_fn)
        if final or spec.tuning is None:
            execution.execute(phase2)
        outcome.requests = phase1 + phase2
        outcome.final_requests = phase2 if spec.tuning is not None else phase1 + phase2
    finally:
        execution.close()
        store.close()
    return outcome
