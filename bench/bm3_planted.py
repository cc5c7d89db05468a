"""BM3 on the planted-cluster data of tests/test_multimodal_models.py: does it beat LightGCN, do its features matter?

Prints test Recall@20 of the popularity ranking, of LightGCN and of BM3 with aligned features, shuffled feature rows and ``cl_weight: 0`` (no
feature loss), for the settings of docs/multimodal-models.md (BM3), with that test file's training loop (Adam,
lr 1e-2, batch 1024, seed 0, one thread). ``--seeds 1 2 3 --epochs 40 80``: the same over data seeds.

    PYTHONPATH=. python bench/bm3_planted.py
    PYTHONPATH=. python bench/bm3_planted.py --seeds 1 2 3 --epochs 40 80 --layers 2
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from recbole_ext.models.multimodal.bm3 import BM3  # noqa: E402  (importing recbole_ext applies its shims)
from recbole_ext.testing.multimodal_toy import planted_benchmark, recall_at_k  # noqa: E402
from recbole_ext.testing.multimodal_toy import trained_recall as recall  # noqa: E402


class Popularity:
    """Scores every item by its training count (the ranking a collapsed model cannot beat)."""

    def __init__(self, dataset):
        self.counts = torch.bincount(torch.from_numpy(dataset.train[:, 1]), minlength=dataset.n_items).float()

    def eval(self):
        return self

    def full_sort_predict(self, interaction):
        return self.counts.repeat(len(next(iter(interaction.values()))))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1])
    parser.add_argument("--epochs", type=int, nargs="+", default=[25, 40])
    parser.add_argument("--layers", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args(argv)
    from recbole.model.general_recommender import LightGCN

    torch.set_num_threads(1)
    print("seed epochs n_layers | LightGCN | BM3 aligned | BM3 shuffled | BM3 cl_weight=0")
    for seed in args.seeds:
        data = planted_benchmark(seed)
        shuffled = data.shuffled_features(seed=0)
        print(f"{seed} popularity ranking: {recall_at_k(Popularity(data), data, 'test', 20):.3f}")
        for epochs in args.epochs:
            with torch.random.fork_rng():
                lightgcn = recall(LightGCN, data, epochs, n_layers=2, reg_weight=1e-4, require_pow=False)
            for layers in args.layers:
                row = [recall(BM3, data, epochs, n_layers=layers), recall(BM3, shuffled, epochs, n_layers=layers),
                       recall(BM3, data, epochs, n_layers=layers, cl_weight=0.0)]
                print(f"{seed} {epochs} {layers} | {lightgcn:.3f} | " + " | ".join(f"{r:.3f}" for r in row),
                      flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
