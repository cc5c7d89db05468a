"""Data-parallel training against one process: training samples per second and peak memory of every rank.

Each configuration runs ``run.py`` as 1 or N processes started the way torchrun starts them (RANK, WORLD_SIZE,
MASTER_ADDR/PORT in the environment; here by this script, so that it can read every rank's own peak RSS from
``wait4``). The machine's cores are split between the ranks (OMP_NUM_THREADS = cores // N), so every row uses the
same hardware; a one-process, one-thread row shows what each rank would do alone. Samples: training interactions
(top-K tasks) or training patients (the medication task) per epoch; the first epoch is left out of the mean.

    PYTHONPATH=. python bench/distributed.py [--procs 1 2] [--epochs 4] [--only BPR,MambaRec,CafeMed]

Expect little gain on a 2-core machine: the point is the overhead of the collectives and the memory of a rank.
The evaluation's memory at 100k and 1M items is measured by bench/scale.py.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# (model, dataset, config): a row-mean model on RecBole's general task, a replicated full-graph model on the MMRec
# protocol, a row-mean medication model; synth-ehr-bench is generated at MIMIC-III scale by this script
CASES = [
    ("BPR", "ml-100k", {"train_batch_size": 2048}),
    ("MambaRec", "ml-100k-mm", {}),
    ("CafeMed", "synth-ehr-bench", {"patients_per_batch": 16}),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _samples_per_epoch(model: str, dataset: str, config: dict) -> int:
    from recbole_ext.config import build_config

    cfg, task = build_config(model, dataset, {**config, "state": "ERROR"})
    data = task.create_dataset(cfg)
    train, _, _ = task.data_preparation(cfg, data)
    return train.n_patients if hasattr(train, "n_patients") else len(train._dataset)


def _launch(model: str, dataset: str, config: dict, procs: int, threads: int, epochs: int, work: Path) -> dict:
    port, run_dir = _free_port(), work / f"{model}-{procs}x{threads}-{time.time_ns()}"
    args = [sys.executable, str(ROOT / "run.py"), f"--model={model}", f"--dataset={dataset}", f"--epochs={epochs}",
            f"--run_dir={run_dir}", "--stopping_step=1000", "--resume_every=0", "--evaluate_test=False",
            *[f"--{k}={v}" for k, v in config.items()]]
    children = []
    for rank in range(procs):
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(ROOT)}
        if procs > 1:
            env.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(procs), MASTER_ADDR="127.0.0.1",
                       MASTER_PORT=str(port))
        children.append(subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                         text=True))
    peaks = {}
    for rank, child in enumerate(children):
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
        peaks[rank] = usage.ru_maxrss / 1024.0
        if child.returncode:
            raise SystemExit(f"{model} x{procs} rank {rank} failed:\n{child.stderr.read()[-3000:]}")
    result = json.loads((run_dir / "result.json").read_text())
    times = [h["time_s"] for h in result["history"]][1:]
    return {"epoch_s": sum(times) / max(len(times), 1), "peak_mb": [peaks[r] for r in sorted(peaks)],
            "loss": result["history"][-1]["train_loss"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--procs", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--only", default="", help="comma-separated models of the cases to run")
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory(prefix="bench-distributed-") as tmp:
        work = Path(tmp)
        subprocess.run([sys.executable, str(ROOT / "run.py"), "prepare", "synthetic-ehr", "--name",
                        "synth-ehr-bench", "--out", str(work / "data")], check=True, stdout=subprocess.DEVNULL,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
        rows = ["| model | dataset | processes x threads | s / epoch | samples / s | speed-up | peak RSS per rank (MB) "
                "| last loss |", "|---|---|---|---|---|---|---|---|"]
        for model, dataset, config in CASES:
            if args.only and model not in args.only.split(","):
                continue
            if dataset == "synth-ehr-bench":
                config = {**config, "data_path": str(work / "data")}
            samples = _samples_per_epoch(model, dataset, config)  # builds ml-100k-mm if needed, before timing
            # all cores in one process (the reference), one core in one process, then N processes sharing the cores
            plans = [(1, cores)] + ([(1, 1)] if cores > 1 else []) + \
                [(n, max(cores // n, 1)) for n in args.procs if n > 1]
            base = None
            for procs, threads in plans:
                r = _launch(model, dataset, config, procs, threads, args.epochs, work)
                base = r["epoch_s"] if base is None else base
                speed_up = base / r["epoch_s"]
                rows.append(f"| {model} | {dataset} | {procs} x {threads} | {r['epoch_s']:.2f} | "
                            f"{samples / r['epoch_s']:,.0f} | {speed_up:.2f}x | "
                            f"{' / '.join(f'{m:,.0f}' for m in r['peak_mb'])} | {r['loss']:.4f} |")
                print(rows[-1], flush=True)
    print("\n".join(rows))


if __name__ == "__main__":
    main()
