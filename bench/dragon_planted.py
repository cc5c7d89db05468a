"""DRAGON on the planted-cluster data of tests/test_multimodal_models.py: does it beat LightGCN, do its features matter?

Prints test Recall@20 of LightGCN and of DRAGON with aligned and with shuffled feature rows, both trained the same
way: that test file's training loop (Adam, batch 1024, seed 0, one thread) at each learning rate and epoch count
asked for. The planted test's own setting is lr 1e-2 for 25 epochs.

    PYTHONPATH=. python bench/dragon_planted.py
    PYTHONPATH=. python bench/dragon_planted.py --seeds 1 2 3 --lrs 0.01 0.001 --epochs 25 50
"""
from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from recbole_ext.models.multimodal.dragon import DRAGON  # noqa: E402  (importing recbole_ext applies its shims)
from recbole_ext.testing.multimodal_toy import planted_benchmark, trained_recall  # noqa: E402


def row(seed: int, lr: float, epochs: int) -> list[float]:
    """``[LightGCN, DRAGON aligned, DRAGON shuffled]`` on the data of ``seed``, each trained with ``lr``, ``epochs``."""
    from recbole.model.general_recommender import LightGCN

    data = planted_benchmark(seed)
    with torch.random.fork_rng():
        lightgcn = trained_recall(LightGCN, data, epochs, lr, n_layers=2, reg_weight=1e-4, require_pow=False)
    return [lightgcn, trained_recall(DRAGON, data, epochs, lr),
            trained_recall(DRAGON, data.shuffled_features(seed=0), epochs, lr)]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1])
    parser.add_argument("--lrs", type=float, nargs="+", default=[0.01, 0.001])
    parser.add_argument("--epochs", type=int, nargs="+", default=[25, 50])
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    print("data seed, lr, epochs | LightGCN | DRAGON aligned | DRAGON shuffled")
    for seed, lr, epochs in itertools.product(args.seeds, args.lrs, args.epochs):
        print(f"{seed}, {lr:g}, {epochs} | " + " | ".join(f"{r:.3f}" for r in row(seed, lr, epochs)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
