"""fp32 against ``precision: bf16``: the same run (model, dataset, seed, epochs) twice, metrics and time per epoch.

    PYTHONPATH=. python bench/precision.py [--epochs 5] [--threads 1] [--runs MambaRec:synth-mm,CafeMed:synth-ehr-small]

Each run goes through ``recbole_ext.quick_start.run`` (saved=False) on a bundled dataset; the table prints the best
validation score, the test metrics of the selected epoch and the mean training seconds per epoch for both
precisions. bf16 runs the loss under CPU autocast here (the same code path as CUDA autocast).
"""
from __future__ import annotations

import argparse
import statistics
import tempfile

import recbole_ext  # noqa: F401  (compat shims and registry before any RecBole import)

DEFAULT_RUNS = "MambaRec:synth-mm,CafeMed:synth-ehr-small"
SHOWN = {"mmrec": ["recall@20", "ndcg@20"], "medrec": ["jaccard", "f1", "prauc", "ddi_rate"]}


def one_run(model: str, dataset: str, precision: str, epochs: int, seed: int, runs_root: str):
    from recbole_ext.quick_start import run

    return run(model, dataset, saved=False, config_dict={
        "epochs": epochs, "seed": seed, "precision": precision, "show_progress": False, "state": "WARNING",
        "runs_root": runs_root, "stopping_step": epochs})


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=2020)
    parser.add_argument("--runs", default=DEFAULT_RUNS, help="model:dataset pairs, comma-separated")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    print(f"{'model':<10} {'dataset':<16} {'precision':<9} {'best valid':>10} {'test':<60} {'s/epoch':>8}")
    with tempfile.TemporaryDirectory() as runs_root:
        for pair in args.runs.split(","):
            model, dataset = pair.split(":")
            for precision in ("fp32", "bf16"):
                result = one_run(model, dataset, precision, args.epochs, args.seed, runs_root)
                shown = SHOWN.get(result.task, sorted(result.test_result)[:4])
                test = "  ".join(f"{k} {result.test_result[k]:.4f}" for k in shown if k in result.test_result)
                per_epoch = statistics.mean(h["time_s"] for h in result.history)
                print(f"{model:<10} {dataset:<16} {precision:<9} {result.best_valid_score:>10.4f} {test:<60} "
                      f"{per_epoch:>8.2f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
