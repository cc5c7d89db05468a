"""``python run.py leaderboard SPEC.yaml [--workers N] [--backend local|ray] [--address ADDR] [--out DIR]``.

Runs every (model, dataset, configuration, seed) of the spec that is not finished yet, stores each finished run in
``DIR/results.sqlite`` and writes the tables, plots and HTML page into DIR.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path

from recbole_ext.errors import UserError, run_as_script
from recbole_ext.leaderboard.plan import DEFAULT_RUN_FN
from recbole_ext.leaderboard.spec import load_spec
from recbole_ext.leaderboard.spec_keys import check_spec_keys
from recbole_ext.leaderboard.tuning_spec import space_for
from recbole_ext.utils.argparsing import CommandParser


def build_parser() -> argparse.ArgumentParser:
    p = CommandParser(prog="run.py leaderboard", description=__doc__.split("\n\n")[1].strip())
    p.add_argument("spec", help="leaderboard spec (YAML); see docs/leaderboard.md")
    p.add_argument("--workers", type=int, default=None,
                   help="runs at once (local default 1; ray default: the cluster's CPUs)")
    p.add_argument("--backend", choices=["local", "ray"], default="local",
                   help="local: one spawned process per run; ray: one Ray task per run")
    p.add_argument("--address", default=None, help="Ray cluster address (with --backend ray); default: start one")
    p.add_argument("--out", default=None, help="output folder (default runs/leaderboard/<spec name>)")
    p.add_argument("--no-retry-failed", action="store_true", help="keep failed runs as they are instead of retrying")
    p.add_argument("--report-only", action="store_true", help="run nothing; rebuild the outputs from the store")
    p.add_argument("--tune-only", action="store_true",
                   help="a tuned board: run the studies to their budget, not the final runs (report what is done)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--run-fn", default=DEFAULT_RUN_FN, help=argparse.SUPPRESS)  # tests: a fast stand-in
    return p


@contextlib.contextmanager
def _naming_the_run(spec, model, dataset: str, point: dict):
    """A UserError inside names the spec, the model, the dataset and the grid point."""
    try:
        yield
    except UserError as exc:
        raise UserError(f"{spec.source}: {model.name} on {dataset}{f' at {point}' if point else ''}: {exc.message}",
                        fix=exc.fix) from None


def _points_to_check(spec, model) -> list[dict]:
    """A grid board's points; a tuned board's search space at its edges (each range's ends, each choice)."""
    if spec.tuning is None:
        return model.grid_points()
    return [{}] + [{p.name: v} for p in space_for(model, spec.source).params for v in p.extremes()]


def check_models_and_options(spec, build: bool = True) -> None:
    """Before the first run starts: every model name is known and every run's options are within the model's
    bounds (``check_options``); with ``build``, every run's configuration also builds as the worker will build it
    (``build_config``: the dataset exists and suits the model) and the spec's ``metrics`` are computed."""
    from recbole_ext.config import build_config, computed_metrics
    from recbole_ext.options import check_options
    from recbole_ext.leaderboard.plan import run_config
    from recbole_ext.registry import model_class

    runs = [(model, dataset, point) for model in spec.models for dataset in filter(model.runs_on, spec.datasets)
            for point in _points_to_check(spec, model)]
    for model, dataset, point in runs:  # the cheap check first, for every run
        with _naming_the_run(spec, model, dataset, point):
            check_options(model_class(model.name), run_config(spec, model, dataset, point, spec.seeds[0]))
    if not build:
        return
    computed: dict[str, set[str]] = {}
    for model, dataset, point in runs:
        with _naming_the_run(spec, model, dataset, point):
            built, _ = build_config(model.name, dataset, run_config(spec, model, dataset, point, spec.seeds[0]))
        computed.setdefault(dataset, set()).update(computed_metrics(built["metrics"], built["topk"]))
    if spec.metrics:
        everywhere = set().union(*computed.values())
        unknown = [m for m in spec.metrics if m not in everywhere]
        if unknown:
            raise UserError(f"{spec.source}: metrics {unknown} are computed on no dataset of the board",
                            fix=f"list metrics its runs compute: {sorted(everywhere)}")
        for dataset, names in computed.items():
            if not names & set(spec.metrics):
                raise UserError(f"{spec.source}: none of metrics {list(spec.metrics)} is computed on {dataset}",
                                fix=f"add some of {sorted(names)}")


def main(argv: list[str] | None = None) -> int:
    from recbole_ext.leaderboard.report import write_report
    from recbole_ext.leaderboard.runner import run_spec
    from recbole_ext.leaderboard.stats import build_tables
    from recbole_ext.leaderboard.store import ResultStore

    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    if args.workers is not None and args.workers < 1:
        raise UserError(f"--workers must be at least 1, got {args.workers}", fix="pass --workers 2")
    if args.tune_only and args.report_only:
        raise UserError("--tune-only and --report-only exclude each other", fix="keep one")
    if args.address and args.backend != "ray":
        raise UserError("--address only applies to --backend ray", fix="add --backend ray or drop --address")
    spec = load_spec(args.spec)
    if args.run_fn == DEFAULT_RUN_FN:  # an unknown model or an out-of-range option fails now, not in every worker
        if not args.report_only:  # a report of runs already made reads the store, whatever the spec's keys
            check_spec_keys(spec)
        check_models_and_options(spec, build=not args.report_only)  # a report needs no dataset on this machine
    out = Path(args.out) if args.out else Path("runs") / "leaderboard" / spec.name
    outcome = run_spec(spec, out, workers=args.workers, backend=args.backend, address=args.address,
                       run_fn=args.run_fn, retry_failed=not args.no_retry_failed, progress=not args.no_progress,
                       execute_runs=not args.report_only, final=not args.tune_only)
    with ResultStore(outcome.store_path) as store:
        rows = store.rows(r.run_key for r in outcome.requests)
    order = {r.run_key: i for i, r in enumerate(outcome.requests)}
    rows.sort(key=lambda r: order[r["run_key"]])
    trial_keys = [t.run_key for o in outcome.studies for t in o.trials if t.run_key]
    with ResultStore(outcome.store_path) as store:
        trial_rows = sorted(store.rows(trial_keys), key=lambda r: (r["study"] or "", r["trial"] or 0))
    models = {d: [m.name for m in spec.models if m.runs_on(d)] for d in spec.datasets}
    tables = build_tables(spec.datasets, models, outcome.final_requests, rows, outcome.chosen,
                          list(spec.metrics) if spec.metrics else None)
    chosen_keys = {r.run_key for r in outcome.final_requests
                   if outcome.chosen.get((r.model, r.dataset)) == r.grid_point}
    files = write_report(out, spec.name, spec.task, tables, rows + trial_rows, chosen_keys,
                         studies=outcome.studies, tuning=spec.tuning)
    missing = 0 if args.tune_only else len(outcome.requests) - len(rows)  # --tune-only plans finals it does not run
    print(json.dumps({"spec": spec.name, "out": str(out), "runs": len(outcome.requests),
                      **({"trials": len(trial_keys)} if spec.tuning else {}), "executed": outcome.executed,
                      "skipped": outcome.skipped, "failed_now": outcome.failed,
                      "failed_total": sum(r["status"] != "ok" for r in rows), "missing": missing}))
    print(f"wrote {len(files)} files to {out}: {', '.join(f.name for f in files[:5])}, ...")
    return 0 if not any(r["status"] != "ok" for r in rows + trial_rows) and not missing else 1


if __name__ == "__main__":
    run_as_script(main)
