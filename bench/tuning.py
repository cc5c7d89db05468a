"""Cost of equal-budget tuning, with and without pruning: trials per hour, CPU time, epochs trained, and whether
pruning changed the chosen configuration's validation score.

    PYTHONPATH=. python bench/tuning.py [--datasets synth-mm,synth-ehr-small] [--models BPR,LightGCN,...]
                                        [--trials 20] [--max-epochs 50] [--pruners none,median] [--workers 2]
                                        [--out runs/bench-tuning] [--json FILE]

For each dataset, one tuned leaderboard per pruner (``--tune-only``: the studies, no final runs), every model of
the dataset's task with the same budget, through ``python run.py leaderboard`` as a user runs it. Read from each
store: trials finished (complete / pruned / failed), the epochs every trial trained (its history), the workers'
wall time (``wall_time_s``, imports included) and CPU time (the run's user + system time is not recorded per run,
so CPU time here is the leaderboard command's children's rusage), and per model the chosen trial's validation
score. Target (the tuning issue): pruning at least halves the epochs trained while the chosen validation score
stays within 1 % of the unpruned search's.

Defaults per dataset: synth-mm (task mmrec) tunes BPR, LightGCN, VBPR, FREEDOM, LATTICE, MGCN, MambaRec;
synth-ehr-small (task medrec) tunes RETAIN, GAMENet, CafeMed, CausalMed (the spec's models; ``--models`` narrows
them). A store is reused when it exists, so an interrupted benchmark resumes.
"""
from __future__ import annotations

import argparse
import json
import resource
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
MODELS = {"synth-mm": ["BPR", "LightGCN", "VBPR", "FREEDOM", "LATTICE", "MGCN", "MambaRec"],
          "synth-ehr-small": ["RETAIN", "GAMENet", "CafeMed", "CausalMed"]}
TASKS = {"synth-mm": "mmrec", "synth-ehr-small": "medrec"}


def write_spec(path: Path, dataset: str, models: list[str], trials: int, max_epochs: int, pruner: str) -> Path:
    spec = {"name": f"bench-{dataset}-{pruner}", "task": TASKS[dataset], "datasets": [dataset], "seeds": [1],
            "tuning": {"trials": trials, "sampler": "tpe", "seed": 0, "max_epochs": max_epochs, "pruner": pruner},
            "models": models}
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def measure(store: Path) -> dict:
    conn = sqlite3.connect(str(store))
    try:
        rows = conn.execute("SELECT model, status, pruned, history, wall_time_s, best_valid_score FROM runs "
                            "WHERE phase = 'tune'").fetchall()
    finally:
        conn.close()
    out = {"trials": len(rows), "pruned": sum(bool(r[2]) for r in rows), "failed": sum(r[1] != "ok" for r in rows),
           "epochs_trained": sum(len(json.loads(r[3] or "[]")) for r in rows),
           "worker_wall_s": round(sum(r[4] or 0 for r in rows), 1), "chosen_valid": {}}
    for model in sorted({r[0] for r in rows}):
        complete = [r[5] for r in rows if r[0] == model and r[1] == "ok" and not r[2] and r[5] is not None]
        out["chosen_valid"][model] = max(complete) if complete else None  # every bundled valid metric: bigger
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--datasets", default="synth-mm,synth-ehr-small")
    p.add_argument("--models", default=None, help="comma-separated; default: the dataset's list (see above)")
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--max-epochs", type=int, default=50)
    p.add_argument("--pruners", default="none,median")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--out", default="runs/bench-tuning")
    p.add_argument("--json", default=None, help="also write the figures to this file")
    args = p.parse_args(argv)
    out_root = Path(args.out).resolve()
    out_root.mkdir(parents=True, exist_ok=True)
    results = []
    for dataset in args.datasets.split(","):
        models = [m for m in (args.models.split(",") if args.models else MODELS[dataset]) if m in MODELS[dataset]]
        for pruner in args.pruners.split(","):
            spec = write_spec(out_root / f"{dataset}-{pruner}.yaml", dataset, models, args.trials, args.max_epochs,
                              pruner)
            out = out_root / f"{dataset}-{pruner}"
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            start = time.time()
            proc = subprocess.run([sys.executable, str(ROOT / "run.py"), "leaderboard", str(spec), "--out", str(out),
                                   "--workers", str(args.workers), "--tune-only", "--no-progress"], cwd=str(ROOT))
            wall = time.time() - start
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            if proc.returncode != 0:
                print(f"{dataset}/{pruner}: leaderboard exited {proc.returncode}", file=sys.stderr)
            figures = measure(out / "results.sqlite")
            figures.update(dataset=dataset, pruner=pruner, models=models, wall_s=round(wall, 1),
                           cpu_s=round(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, 1),
                           trials_per_hour=round(figures["trials"] / wall * 3600, 1) if wall > 0 else None)
            results.append(figures)
            print(json.dumps(figures), flush=True)
    for dataset in args.datasets.split(","):
        base = next((r for r in results if r["dataset"] == dataset and r["pruner"] == "none"), None)
        for r in results:
            if base is None or r is base or r["dataset"] != dataset:
                continue
            ratio = r["epochs_trained"] / base["epochs_trained"] if base["epochs_trained"] else float("nan")
            worst = min(((r["chosen_valid"][m] or 0) / b - 1 for m, b in base["chosen_valid"].items()
                         if b and m in r["chosen_valid"]), default=float("nan"))
            print(f"{dataset}: {r['pruner']} trains {ratio:.2f}x the epochs of no pruning "
                  f"(target <= 0.50); worst change of a model's chosen validation score {worst:+.2%} (target >= -1 %)")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
