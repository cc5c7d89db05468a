"""Every RecBole general recommender on the bundled synth-mm under the MMRec protocol: runs or refused (why), the
kind of training batches, seconds per training epoch and test Recall@20 after a few epochs with RecBole's default
hyper-parameters (non-gradient models train once whatever --epochs says).

    PYTHONPATH=. python bench/recbole_zoo.py [--epochs 3] [--threads 1] [--models Pop,BPR,...] [--skip ConvNCF]
                                          [--json out.json]

Prints a Markdown table (the one in docs/multimodal-models.md): "s / training epoch" is the epochs' training time,
"s in all" the whole run (dataset, model construction: where ItemKNN, EASE, SLIMElastic, ADMMSLIM and NCEPLRec do
their work, validation and test). Runs write into a temporary folder.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def one(name: str, epochs: int, runs_root: str) -> dict:
    from recbole_ext.errors import UserError
    from recbole_ext.quick_start import run
    from recbole_ext.training import mmrec_zoo

    cls = mmrec_zoo.general_recommenders()[name]
    row = {"model": name, "kind": mmrec_zoo.kind_of(cls)}
    start = time.time()
    try:
        result = run(name, "synth-mm", config_dict={"epochs": epochs, "state": "WARNING", "show_progress": False,
                                                    "runs_root": runs_root})
    except UserError as err:
        return {**row, "status": f"refused: {err}"}
    except Exception as err:  # reported in the table, not hidden: a model that fails is a finding
        return {**row, "status": f"failed: {type(err).__name__}: {str(err).splitlines()[0][:120]}"}
    times = [h["time_s"] for h in result.history]
    return {**row, "status": "runs", "epochs": len(times), "epoch_s": sum(times) / max(len(times), 1),
            "wall_s": time.time() - start, "test_recall@20": result.test_result.get("recall@20")}


def table(rows: list[dict]) -> str:
    lines = ["| model | kind | status | epochs | s / training epoch | s in all | test Recall@20 |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["status"] == "runs":
            lines.append(f"| {r['model']} | {r['kind']} | runs | {r['epochs']} | {r['epoch_s']:.2f} | "
                         f"{r['wall_s']:.1f} | {r['test_recall@20']:.4f} |")
        else:
            lines.append(f"| {r['model']} | {r['kind']} | {r['status']} | | | | |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3, help="epochs per model (MMRec protocol otherwise)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--models", default="", help="comma-separated subset (default: the whole package)")
    parser.add_argument("--skip", default="", help="comma-separated models to leave out")
    parser.add_argument("--json", default="", help="also write the rows to this JSON file")
    args = parser.parse_args(argv)
    import torch

    from recbole_ext.training import mmrec_zoo  # imports recbole_ext first: its compat shims

    torch.set_num_threads(args.threads)
    skip = set(args.skip.split(","))
    names = [n for n in ([n for n in args.models.split(",") if n] or mmrec_zoo.general_recommenders()) if n not in skip]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        os.environ.setdefault("RECBOLE_EXT_CACHE", os.path.join(tmp, "cache"))
        for name in names:
            rows.append(one(name, args.epochs, os.path.join(tmp, "runs")))
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    print(table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
