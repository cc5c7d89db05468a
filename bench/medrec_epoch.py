"""Seconds per training epoch and peak memory of every medication model on MIMIC-III-scale synthetic visits.

    PYTHONPATH=. python bench/medrec_epoch.py [--threads 2] [--batch-size 32] [--models CafeMed,RETAIN,...]
                                             [--data task|inprocess] [--set node_layout=padded]
                                             [--epochs 3 --interleave] [--compile]

Data at MIMIC-III scale (6,350 patients, ~15,000 visits, 2,000 diagnoses, 1,400 procedures, 131 medications):
``--data task`` (default) prepares the medication task's ``synth-ehr`` dataset once in a temporary folder
(``prepare synthetic-ehr`` defaults) and reads it through ``MedRecDataset`` / ``MedRecDataLoader`` exactly as
training does; ``--data inprocess`` uses ``recbole_ext.testing.medrec_synthetic.make_synthetic`` (planted
diagnosis->medication effects, 448 DDI pairs). The training split is the first 2/3 of the patients. Each model runs in its own subprocess so its peak RSS (``ru_maxrss``) is its own;
the epoch is one pass over the training patients with Adam built as ``MedRecTrainer`` builds it (fused on CPU
unless ``--set fused_adam=false``), after one warm-up batch.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import recbole_ext  # noqa: F401  (compat shims and registry before any RecBole import)

MODELS = ["RETAIN", "CafeMed", "CausalMed", "GAMENet", "SafeDrug", "MedFM", "MedDeepFM", "MedWideDeep"]
SCALE = dict(n_patients=6350, n_diag=2000, n_proc=1400, n_med=131, mean_extra_visits=1.37, diag_per_visit=14,
             proc_per_visit=4, effects_per_diag=2, n_ddi_pairs=448, seed=0)


def load_data(source: str, folder: str | None, batch_size: int):
    """``(dataset, training batches)`` for the chosen data source."""
    if source == "inprocess":
        from recbole_ext.testing.medrec_synthetic import make_synthetic

        data = make_synthetic(**SCALE)
        return data, data.batches("train", batch_size)
    from recbole_ext.data.medrec_dataset import MedRecDataLoader, MedRecDataset

    config = {"dataset": "synth-ehr", "data_path": folder}
    dataset = MedRecDataset(config)
    return dataset, list(MedRecDataLoader(config, dataset, "train", batch_size, shuffle=False))


def training_step(name: str, data, overrides: dict | None = None, compile_loss: bool = False):
    """``(step(batch), init seconds)`` of one model: RecBole's Adam turned fused by the medication trainer's rule.

    ``compile_loss``: the loss goes through ``torch.compile(..., dynamic=True)`` (a measured, rejected variant, see
    docs/medication-models.md "Speed work, round 4"); the first epochs then include the compilation."""
    import torch
    import yaml

    from recbole_ext.models.medrec import MODELS as SPECS
    from recbole_ext.registry import load_object
    from recbole_ext.training.medrec import fused_adam_enabled
    from recbole_ext.training.optim import fuse_adam_on_cpu
    from recbole_ext.utils.paths import PROPERTIES_DIR

    config = yaml.safe_load((PROPERTIES_DIR / "model" / f"{name}.yaml").read_text()) or {}
    config.update(overrides or {})
    torch.manual_seed(0)
    t0 = time.perf_counter()
    model = load_object(SPECS[name])(config, data)
    init_s = time.perf_counter() - t0
    # as MedRecTrainer builds it (fused on CPU unless fused_adam: False), so every model gets the same optimizer
    opt = torch.optim.Adam(model.parameters(), lr=float(config.get("learning_rate", 1e-3)),
                           weight_decay=float(config.get("weight_decay", 0.0) or 0.0))
    opt = fuse_adam_on_cpu(opt, fused_adam_enabled(config))
    model.train()
    loss_fn = torch.compile(model.calculate_loss, dynamic=True) if compile_loss else model.calculate_loss

    def step(batch):
        opt.zero_grad()
        loss = loss_fn(batch)
        loss.backward()
        opt.step()

    return step, init_s


def timed_epoch(step, batches) -> float:
    t0 = time.perf_counter()
    for batch in batches:
        step(batch)
    return time.perf_counter() - t0


def one_model(name: str, batch_size: int, epochs: int, source: str = "inprocess", folder: str | None = None,
              overrides: dict | None = None, compile_loss: bool = False) -> dict:
    import torch

    t0 = time.perf_counter()
    data, batches = load_data(source, folder, batch_size)
    gen_s = time.perf_counter() - t0
    step, init_s = training_step(name, data, overrides, compile_loss)
    step(batches[0])
    times = [timed_epoch(step, batches) for _ in range(epochs)]
    return {"model": name, "overrides": overrides or {}, "epoch_s": min(times), "epoch_s_all": times,
            "init_s": init_s, "data_s": gen_s, **batch_stats(batches), "data": source,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "threads": torch.get_num_threads()}


def batch_stats(batches) -> dict:
    return {"train_patients": sum(len(b.patient_ids) for b in batches),
            "train_visits": sum(b.n_visits for b in batches), "batches": len(batches)}


def interleaved(names: list[str], batch_size: int, epochs: int, source: str, folder: str | None,
                overrides: dict, compile_loss: bool = False) -> list[dict]:
    """All models in this process on the same batches, their epochs alternating (model 1, 2, ..., 1, 2, ...):
    on a shared machine the load then hits every model alike, so the ratios are comparable (minimum per model).
    Peak RSS is the whole process's."""
    import torch

    data, batches = load_data(source, folder, batch_size)
    steps = {}
    for name in names:
        steps[name] = training_step(name, data, overrides, compile_loss)
        steps[name][0](batches[0])
    times = {name: [] for name in names}
    for _ in range(epochs):
        for name in names:
            times[name].append(timed_epoch(steps[name][0], batches))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return [{"model": name, "overrides": overrides, "epoch_s": min(times[name]), "epoch_s_all": times[name],
             "init_s": steps[name][1], **batch_stats(batches), "data": source, "peak_rss_mb": rss,
             "threads": torch.get_num_threads(), "interleaved": True} for name in names]


def per_step_ms(row: dict) -> float:
    """Milliseconds per optimiser step of the fastest epoch: with ``--batch-size 1`` nearly all of it is the fixed
    per-step cost (kernel dispatch, autograd, optimizer), which larger batches amortise."""
    return 1000 * row["epoch_s"] / max(row["batches"], 1)


def parse_overrides(items: list[str]) -> dict:
    import yaml

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--set {item!r}: expected KEY=VALUE")
        out[key] = yaml.safe_load(value)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32, help="patients per batch")
    parser.add_argument("--epochs", type=int, default=1, help="timed epochs (the minimum is reported)")
    parser.add_argument("--data", choices=("task", "inprocess"), default="task")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--interleave", action="store_true",
                        help="one process, the models' epochs alternating (robust ratios on a shared machine; "
                             "peak RSS is then the process's)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="model config override for every model (YAML value), e.g. --set node_layout=padded")
    parser.add_argument("--compile", action="store_true",
                        help="run each model's loss through torch.compile(dynamic=True) (needs a C++ compiler)")
    args = parser.parse_args(argv)
    if args.one:
        import torch

        torch.set_num_threads(args.threads)
        print(json.dumps(one_model(args.one, args.batch_size, args.epochs, args.data, args.folder,
                                   parse_overrides(args.set), args.compile)))
        return 0
    tmp = tempfile.TemporaryDirectory(prefix="medrec-bench-")
    if args.data == "task":
        from recbole_ext.data.prepare.synthetic_ehr import main as prepare_synthetic

        with contextlib.redirect_stdout(io.StringIO()):
            prepare_synthetic(["--out", tmp.name, "--name", "synth-ehr"])
    rows = []
    names = args.models.split(",")
    if args.interleave:
        import torch

        torch.set_num_threads(args.threads)
        rows = interleaved(names, args.batch_size, args.epochs, args.data, str(Path(tmp.name) / "synth-ehr"),
                           parse_overrides(args.set), args.compile)
        for row in rows:
            print(f"{row['model']:12s} epoch {row['epoch_s']:7.2f} s = {per_step_ms(row):6.2f} ms/step   (all: "
                  f"{' '.join(f'{t:.2f}' for t in row['epoch_s_all'])})", flush=True)
        print(f"process peak RSS {rows[0]['peak_rss_mb']:.0f} MB, {rows[0]['threads']} threads, "
              f"{rows[0]['train_visits']} visits, {rows[0]['batches']} batches")
        names = []
    for name in names:
        cmd = [sys.executable, __file__, "--one", name, "--threads", str(args.threads), "--data", args.data,
               "--folder", str(Path(tmp.name) / "synth-ehr"),
               "--batch-size", str(args.batch_size), "--epochs", str(args.epochs)]
        cmd += [f"--set={item}" for item in args.set] + (["--compile"] if args.compile else [])
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
        out = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if out.returncode:
            print(f"{name}: failed\n{out.stderr[-2000:]}", file=sys.stderr)
            continue
        row = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append(row)
        print(f"{name:12s} epoch {row['epoch_s']:7.2f} s = {per_step_ms(row):6.2f} ms/step   peak RSS {row['peak_rss_mb']:7.0f} MB   "
              f"init {row['init_s']:5.2f} s   ({row['train_patients']} patients, {row['train_visits']} visits, "
              f"{row['batches']} batches, {row['threads']} threads, data {row['data']})", flush=True)
    by_name = {r["model"]: r for r in rows}
    if "CafeMed" in by_name and "RETAIN" in by_name:
        ratio = by_name["CafeMed"]["epoch_s"] / by_name["RETAIN"]["epoch_s"]
        medians = (statistics.median(by_name["CafeMed"]["epoch_s_all"])
                   / statistics.median(by_name["RETAIN"]["epoch_s_all"]))
        print(f"CafeMed / RETAIN epoch time: {ratio:.2f}x (fastest epochs; {medians:.2f}x of the median epochs; "
              f"target <= 2x); CafeMed < 60 s: {by_name['CafeMed']['epoch_s'] < 60}")
    print(f"load average: {os.getloadavg()}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"rows": rows, "load_average": os.getloadavg(), "args": vars(args)}, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
