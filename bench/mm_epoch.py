"""Seconds per training epoch, seconds per full evaluation and peak RSS of the multimodal models.

Synthetic data shaped like the MMRec Amazon sets (4096-d image and 384-d text features, planted clusters):

    baby      19,445 users   7,050 items  ~160,800 interactions
    clothing  39,387 users  23,033 items  ~278,700 interactions

Each (model, shape) runs in its own subprocess so the peak RSS is that model's alone. One epoch = one pass over
the training split in batches of 2048 with one uniform negative per positive (the MMRec protocol); a full
evaluation = encode once + score all items for every test user + mask training items + top-50. Setup (kNN graphs,
adjacency) is timed separately and its graphs are cached on disk the first time. Wall and process CPU seconds are
both reported: on a shared, busy machine the CPU seconds of a one-thread run are the figure that transfers.

    PYTHONPATH=. python bench/mm_epoch.py [--shapes baby,clothing] [--models MambaRec,MGCN,...] [--threads 2]
                                          [--adam fused|plain] [--row-update on|off] [--set KEY=VALUE ...]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import yaml

SHAPES = {"baby": (19445, 7050, 160_792), "clothing": (39387, 23033, 278_677)}
MODELS = ["MambaRec", "MGCN", "FREEDOM", "LATTICE", "VBPR", "LightGCN", "BPR"]


def one(model_name: str, shape: str, threads: int, epochs: int, adam: str = "fused", row_update: bool = True,
        overrides: dict | None = None) -> dict:
    import numpy as np
    import torch

    import recbole_ext  # noqa: F401  (compat shims for RecBole's LightGCN/BPR)
    from recbole_ext.testing.multimodal_toy import (ITEM_FIELD, NEG_PREFIX, USER_FIELD, negatives,
                                                    planted_clusters, toy_config)
    from recbole_ext.registry import model_class
    from recbole_ext.training.row_adam import attach_row_adam

    torch.set_num_threads(threads)
    n_users, n_items, n_inter = SHAPES[shape]
    t0 = time.time()
    # about a fifth of the draws repeat an earlier (user, item) pair and are dropped
    ds = planted_clusters(n_users, n_items, int(n_inter * 1.27), n_clusters=50, seed=0)
    data_s = time.time() - t0
    extra = {"LightGCN": dict(embedding_size=64, n_layers=2, reg_weight=1e-4, require_pow=False),
             "BPR": dict(embedding_size=64)}.get(model_name, {})
    torch.manual_seed(0)
    t0 = time.time()
    model = model_class(model_name)(toy_config(**{**extra, **(overrides or {})}), ds)
    setup_s = time.time() - t0
    # MultimodalDataset hands its feature tables to the model (and reloads them from disk if asked again); the
    # in-memory toy has no file to reload from, so the bench drops its reference here, as the real run does.
    ds = ds.with_features({})
    # plain = RecBole's default; fused = one kernel per tensor, no [n_items, 4096] temporaries (the MMRec
    # trainer's default); row update = the trainer's Adam step of feature tables inside backward
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3, fused=adam == "fused")
    row_updated = attach_row_adam(model, optimiser, enabled=row_update)
    rng = np.random.default_rng(0)
    epoch_s, epoch_cpu_s = [], []
    for _ in range(epochs):
        t0, c0 = time.time(), time.process_time()
        model.train()
        order = rng.permutation(len(ds.train))
        neg = negatives(ds, ds.train[order, 0], rng)
        for start in range(0, len(order), 2048):
            rows = order[start:start + 2048]
            batch = {USER_FIELD: torch.from_numpy(ds.train[rows, 0]), ITEM_FIELD: torch.from_numpy(ds.train[rows, 1]),
                     NEG_PREFIX + ITEM_FIELD: torch.from_numpy(neg[start:start + 2048])}
            optimiser.zero_grad()  # before the forward, as RecBole's trainer does (no stale gradients held)
            loss = model.calculate_loss(batch)
            loss.backward()
            optimiser.step()
        epoch_s.append(time.time() - t0)
        epoch_cpu_s.append(time.process_time() - c0)
    t0, c0 = time.time(), time.process_time()
    model.eval()
    users = np.unique(ds.test[:, 0])
    train_sorted = ds.train[np.argsort(ds.train[:, 0], kind="stable")]
    with torch.no_grad():
        for start in range(0, len(users), 2048):
            u = users[start:start + 2048]
            scores = model.full_sort_predict({USER_FIELD: torch.from_numpy(u)}).view(len(u), -1)
            lo, hi = np.searchsorted(train_sorted[:, 0], [u[0], u[-1] + 1])
            seen = train_sorted[lo:hi]
            rows = np.searchsorted(u, seen[:, 0])
            scores[torch.from_numpy(rows), torch.from_numpy(seen[:, 1])] = -np.inf
            scores[:, 0] = -np.inf
            torch.topk(scores, 50, dim=1)
    eval_s, eval_cpu_s = time.time() - t0, time.process_time() - c0
    n_all = len(ds.train) + len(ds.valid) + len(ds.test)
    return {"model": model_name, "shape": shape, "train_interactions": int(len(ds.train)),
            "all_interactions": int(n_all), "data_s": data_s,
            "setup_s": setup_s, "epoch_s": epoch_s, "epoch_cpu_s": epoch_cpu_s, "eval_s": eval_s,
            "eval_cpu_s": eval_cpu_s, "threads": threads, "adam": adam, "row_updated": row_updated,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", default="baby,clothing")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs; the table shows the last one")
    parser.add_argument("--adam", choices=["plain", "fused"], default="fused",
                        help="fused = the MMRec trainer's default")
    parser.add_argument("--row-update", choices=["on", "off"], default="on",
                        help="on = the trainer's default: Adam step of feature tables inside backward")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="model config override (YAML value), e.g. --set recompute_activations=False")
    parser.add_argument("--one", nargs=2, metavar=("MODEL", "SHAPE"), help=argparse.SUPPRESS)
    parser.add_argument("--timeout", type=int, default=1800, help="per (model, shape) run, seconds")
    args = parser.parse_args(argv)
    if args.one:
        overrides = {k: yaml.safe_load(v) for k, _, v in (item.partition("=") for item in args.set)}
        print(json.dumps(one(args.one[0], args.one[1], args.threads, args.epochs, args.adam, args.row_update == "on",
                             overrides)))
        return 0
    rows = []
    print(f"threads {args.threads}, Adam {args.adam}, row update {args.row_update}, overrides {args.set}, "
          f"load average at the start: {os.getloadavg()}")
    print(f"{'shape':<9} {'model':<9} {'train':>8} {'setup s':>8} {'epoch s':>8} {'epoch cpu':>9} {'eval s':>7} "
          f"{'eval cpu':>8} {'peak RSS MB':>12}", flush=True)
    for shape in args.shapes.split(","):
        for name in args.models.split(","):
            cmd = [sys.executable, __file__, "--one", name, shape, "--threads", str(args.threads),
                   "--epochs", str(args.epochs), "--adam", args.adam, "--row-update", args.row_update]
            cmd += [f"--set={item}" for item in args.set]
            try:
                out = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, env=os.environ)
            except subprocess.TimeoutExpired:
                print(f"{shape:<9} {name:<9} timed out after {args.timeout} s", flush=True)
                continue
            if out.returncode != 0:
                print(f"{shape:<9} {name:<9} failed: {out.stderr.strip().splitlines()[-1:]}", flush=True)
                continue
            r = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append(r)
            print(f"{shape:<9} {name:<9} {r['train_interactions']:>8} {r['setup_s']:>8.1f} {r['epoch_s'][-1]:>8.1f} "
                  f"{r['epoch_cpu_s'][-1]:>9.1f} {r['eval_s']:>7.1f} {r['eval_cpu_s']:>8.1f} {r['peak_rss_mb']:>12.0f}",
                  flush=True)
    print(f"load average at the end: {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
