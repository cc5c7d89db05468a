"""Seconds per training epoch and peak memory of every medication model on MIMIC-III-scale synthetic visits.

    PYTHONPATH=. python bench/medrec_epoch.py [--threads 2] [--batch-size 32] [--models CafeMed,RETAIN,...]

Data: generated in-process (``recbole_ext.models.medrec.testing.make_synthetic``) at MIMIC-III scale: 6,350
patients, ~15,000 visits, 2,000 diagnoses, 1,400 procedures, 131 medications, ~450 DDI pairs; the training split is
the first 2/3 of the patients. Each model runs in its own subprocess so its peak RSS (``ru_maxrss``) is its own;
the epoch is one pass over the training patients with Adam, after one warm-up batch.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

MODELS = ["RETAIN", "CafeMed", "CausalMed", "GAMENet", "SafeDrug", "MedFM", "MedDeepFM", "MedWideDeep"]
SCALE = dict(n_patients=6350, n_diag=2000, n_proc=1400, n_med=131, mean_extra_visits=1.37, diag_per_visit=14,
             proc_per_visit=4, effects_per_diag=2, n_ddi_pairs=448, seed=0)


def one_model(name: str, batch_size: int, epochs: int) -> dict:
    import torch

    from recbole_ext.models.medrec import MODELS as SPECS
    from recbole_ext.models.medrec.testing import make_synthetic
    from recbole_ext.registry import load_object
    import yaml
    from recbole_ext.utils.paths import PROPERTIES_DIR

    t0 = time.perf_counter()
    data = make_synthetic(**SCALE)
    batches = data.batches("train", batch_size)
    gen_s = time.perf_counter() - t0
    config = yaml.safe_load((PROPERTIES_DIR / "model" / f"{name}.yaml").read_text()) or {}
    torch.manual_seed(0)
    t0 = time.perf_counter()
    model = load_object(SPECS[name])(config, data)
    init_s = time.perf_counter() - t0
    opt = torch.optim.Adam(model.parameters(), lr=float(config.get("learning_rate", 1e-3)))
    model.train()

    def step(batch):
        opt.zero_grad()
        loss = model.calculate_loss(batch)
        loss.backward()
        opt.step()

    step(batches[0])
    times = []
    for _ in range(epochs):
        t0 = time.perf_counter()
        for batch in batches:
            step(batch)
        times.append(time.perf_counter() - t0)
    n_visits = sum(b.n_visits for b in batches)
    return {"model": name, "epoch_s": min(times), "epoch_s_all": times, "init_s": init_s, "data_s": gen_s,
            "train_patients": len(data.train_idx), "train_visits": n_visits, "batches": len(batches),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "threads": torch.get_num_threads()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32, help="patients per batch")
    parser.add_argument("--epochs", type=int, default=1, help="timed epochs (the minimum is reported)")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)
    if args.one:
        import torch

        torch.set_num_threads(args.threads)
        print(json.dumps(one_model(args.one, args.batch_size, args.epochs)))
        return 0
    rows = []
    for name in args.models.split(","):
        cmd = [sys.executable, __file__, "--one", name, "--threads", str(args.threads),
               "--batch-size", str(args.batch_size), "--epochs", str(args.epochs)]
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
        out = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if out.returncode:
            print(f"{name}: failed\n{out.stderr[-2000:]}", file=sys.stderr)
            continue
        row = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append(row)
        print(f"{name:12s} epoch {row['epoch_s']:7.2f} s   peak RSS {row['peak_rss_mb']:7.0f} MB   "
              f"init {row['init_s']:5.2f} s   ({row['train_patients']} patients, {row['train_visits']} visits, "
              f"{row['batches']} batches, {row['threads']} threads)", flush=True)
    by_name = {r["model"]: r for r in rows}
    if "CafeMed" in by_name and "RETAIN" in by_name:
        ratio = by_name["CafeMed"]["epoch_s"] / by_name["RETAIN"]["epoch_s"]
        print(f"CafeMed / RETAIN epoch time: {ratio:.2f}x (target <= 2x); CafeMed < 60 s: "
              f"{by_name['CafeMed']['epoch_s'] < 60}")
    print(f"load average: {os.getloadavg()}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"rows": rows, "load_average": os.getloadavg(), "args": vars(args)}, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
