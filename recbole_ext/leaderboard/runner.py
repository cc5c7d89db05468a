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
    runner = None
    bar = None
    try:
        def todo(requests):
            ok = store.finished_keys("ok")
            failed = store.finished_keys("failed")
            keep = [r for r in requests if r.run_key not in ok and (retry_failed or r.run_key not in failed)]
            outcome.skipped += len(requests) - len(keep)
            return keep

        def announce(n: int):
            nonlocal bar
            if bar is None:
                bar = Progress(n, outcome.skipped, enabled=progress)
            else:
                bar.add_total(n)

        def execute(requests):
            nonlocal runner, bar
            requests = todo(requests)
            if not execute_runs:
                return
            # a tuned board's trials were counted up front by announce(); every other request is new to the bar
            new = [] if any(r.tuning.get("phase") == "tune" for r in requests) else requests
            if bar is None:
                bar = Progress(len(new), outcome.skipped, enabled=progress)
            else:
                bar.skipped = outcome.skipped
                bar.add_total(len(new))
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

        if spec.tuning is not None:
            from recbole_ext.leaderboard.tuning import tune

            outcome.studies = tune(spec, hashes, store, execute, run_fn, progress=announce if progress else None,
                                   execute_runs=execute_runs)
            outcome.chosen = {(o.model, o.dataset): o.chosen for o in outcome.studies if o.chosen is not None}
            phase1 = []
        else:
            phase1 = tuning_runs(spec, hashes, run_fn)
            execute(phase1)
            outcome.chosen = stats.choose_configs(phase1, store.rows(r.run_key for r in phase1))
        phase2 = final_runs(spec, hashes, outcome.chosen, run_fn)
        if final or spec.tuning is None:
            execute(phase2)
        outcome.requests = phase1 + phase2
        outcome.final_requests = phase2 if spec.tuning is not None else phase1 + phase2
    finally:
        if bar is not None:
            bar.close()
        if runner is not None:
            runner.close()
        store.close()
    return outcome
