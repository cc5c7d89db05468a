"""One-switch ablations of a multimodal model on a bundled dataset, judged on VALIDATION data only.

Trains with early stopping off (``stopping_step`` 1000) for a fixed number of epochs and prints the best validation
Recall@20 and its epoch, plus the summed training loss / validation Recall@20 after epochs 1, 20, 40, ... (epochs
counted from 1), so training speed and the validation plateau can be compared switch by switch. Only validation
figures are printed (``quick_start.run`` still tests once at the end; this script never looks at that result).

    PYTHONPATH=. python bench/mm_ablation.py MambaRec '{"epochs": 80, "n_ui_layers": 2}' [--dataset synth-mm]

``--diagnostic bn_batch_stats`` makes DREAM's BatchNorm use batch statistics in eval too; ``--diagnostic
no_dream`` replaces DREAM by the identity. Both patch the class in this process only (diagnostics, not options).
"""
from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time


def patch_dream(kind: str) -> None:
    from recbole_ext.models.layers import dream

    original = dream.DREAM.forward
    if kind == "no_dream":
        dream.DREAM.forward = lambda self, x: x
    elif kind == "bn_batch_stats":
        def forward(self, x):
            was_training = self.training
            self.branch_bn.train()
            self.fuse_bn.train()
            try:
                return original(self, x)
            finally:
                self.branch_bn.train(was_training)
                self.fuse_bn.train(was_training)
        dream.DREAM.forward = forward


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("config", nargs="?", default="{}", help="JSON config_dict entries (epochs default 40)")
    parser.add_argument("--dataset", default="synth-mm")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--diagnostic", choices=["bn_batch_stats", "no_dream"])
    args = parser.parse_args()
    import recbole_ext  # noqa: F401  (compat shims and registrations)
    from recbole_ext.quick_start import run

    if args.diagnostic:
        patch_dream(args.diagnostic)
    overrides = json.loads(args.config)
    scratch = tempfile.mkdtemp(prefix="mm_ablation_")
    config = {"epochs": 40, "show_progress": False, "state": "WARNING", "seed": args.seed, "stopping_step": 1000,
              "run_dir": scratch + "/run", **overrides}
    start = time.time()
    try:
        result = run(args.model, args.dataset, config, saved=False)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    rows = [(e["epoch"] + 1, e["train_loss"], (e["valid"] or {}).get("recall@20")) for e in result.history]
    best = max((r for r in rows if r[2] is not None), key=lambda r: r[2])
    shown = " ".join(f"e{e}:{loss:.3f}/{valid}" for e, loss, valid in rows if e % 20 == 0 or e == 1)
    print(f"{args.model} {json.dumps(overrides)} diag={args.diagnostic} {time.time() - start:.0f}s "
          f"best valid recall@20 {best[2]:.4f} @epoch {best[0]}  loss/valid: {shown}")


if __name__ == "__main__":
    main()
