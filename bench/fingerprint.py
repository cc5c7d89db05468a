"""Fixed-seed fingerprint of every bundled model: a short run of each on its bundled dataset, every number kept.

A behaviour-preserving change (a refactoring) must leave this output byte-identical:

    RECBOLE_EXT_CACHE=$(mktemp -d) python bench/fingerprint.py > before.json   # on the old commit
    RECBOLE_EXT_CACHE=$(mktemp -d) python bench/fingerprint.py > after.json    # on the new one
    cmp before.json after.json

Give each side a fresh derived-data cache: a kNN graph cached by an earlier run built with another thread count
can differ in its last bits, and the run that reads it then differs too.

Each run trains 2 epochs with seed 2020 and records the per-epoch training loss, the validation results, the test
results and the per-user test values (as ``repr`` of each float, so a last-bit change shows). Wall time and paths,
which differ between any two runs, are left out. Torch runs on one thread: with two, a reduction's float32 rounding
can change with the machine's load (seen here: one epoch's summed loss of MambaRec or VBPR moved by 6e-8 between two
runs of the same commit, every metric equal). About 6 minutes on one CPU core.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MULTIMODAL = ["BPR", "LightGCN", "VBPR", "FREEDOM", "LATTICE", "LGMRec", "BM3", "DRAGON", "MENTOR", "MGCN", "MambaRec"]
MEDICATION = ["CafeMed", "CausalMed", "CafeMedNoCWG", "CafeMedNoCHARM", "RETAIN", "GAMENet", "SafeDrug", "MedContext",
              "MedFM", "MedDeepFM", "MedWideDeep"]
CASES = [(m, "synth-mm") for m in MULTIMODAL] + [(m, "synth-ehr-small") for m in MEDICATION]


def _plain(value):
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def fingerprint(model: str, dataset: str, runs_root: str) -> dict:
    from recbole_ext.quick_start import run

    result = run(model, dataset, {"epochs": 2, "seed": 2020, "state": "ERROR", "show_progress": False,
                                  "runs_root": runs_root})
    return _plain({"best_valid_score": result.best_valid_score, "best_valid": result.best_valid_result,
                   "test": result.test_result, "losses": [h["train_loss"] for h in result.history],
                   "valid_per_epoch": [h.get("valid", {}) for h in result.history],
                   "per_user_sha256": hashlib.sha256(json.dumps(_plain(result.per_user_test),
                                                                sort_keys=True).encode()).hexdigest()})


def main(argv=None) -> int:
    import torch

    torch.set_num_threads(1)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", help="only these models (default: all bundled)")
    args = parser.parse_args(argv)
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for model, dataset in CASES:
            if args.models and model not in args.models:
                continue
            out[f"{model}/{dataset}"] = fingerprint(model, dataset, tmp)
            print(f"{model}/{dataset} done", file=sys.stderr)
    json.dump(out, sys.stdout, indent=1, sort_keys=True)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
