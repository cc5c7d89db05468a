"""``python run.py recommend``: top-K items for users, or a medication set for a patient.

    recommend --checkpoint PATH --user TOKEN [--user TOKEN ...] [--k 20] [--keep-seen] [--json]
              [--index FACTORY] [--nprobe N] [--ef-search N] [--rebuild-index]
    recommend --checkpoint PATH --users-file FILE            (one user token per line, answered in one batch)
    recommend --checkpoint PATH --patient FILE.json          (medication models)

PATH is a run's model.pth or the run directory.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from recbole_ext.errors import UserError
from recbole_ext.utils.argparsing import CommandParser


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(prog="run.py recommend",
                     description="Top-K items for users, or a medication set for a patient, from a checkpoint.")
    parser.add_argument("--checkpoint", required=True, metavar="PATH",
                        help="checkpoint file of a finished run (model.pth), or its run directory")
    who = parser.add_mutually_exclusive_group(required=True)
    who.add_argument("--user", action="append", metavar="TOKEN", help="external user token (repeatable)")
    who.add_argument("--users-file", metavar="FILE", help="text file, one user token per line")
    who.add_argument("--patient", metavar="FILE.json", help="JSON file of a patient's visits (medication models)")
    parser.add_argument("--k", type=int, default=20, metavar="K", help="items per user")
    parser.add_argument("--keep-seen", action="store_true", help="do not exclude the user's training items")
    parser.add_argument("--rebuild-index", action="store_true",
                        help="rebuild the FAISS index beside the checkpoint even if one exists")
    parser.add_argument("--index", dest="faiss_index", metavar="FACTORY", help="FAISS index_factory string (default: the run's "
                        "faiss_index, i.e. Flat = exact); e.g. IVF4096,Flat for catalogues over a million items")
    parser.add_argument("--nprobe", type=int, metavar="N", help="IVF lists probed per query")
    parser.add_argument("--ef-search", type=int, metavar="N", help="HNSW search beam width")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    return parser


def read_users_file(path) -> list[str]:
    path = Path(path)
    if path.is_dir():
        raise UserError(f"users file {path} is a folder", fix="pass a text file, one user token per line")
    if not path.is_file():
        raise UserError(f"users file {path} does not exist", fix="one user token per line")
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()  # -sig: a BOM is not part of the first token
    except UnicodeDecodeError:
        raise UserError(f"users file {path} is not UTF-8 text", fix="one user token per line") from None
    users = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not users:
        raise UserError(f"users file {path} lists no users", fix="one user token per line")
    return users


def main(argv: list[str] | None = None) -> int:
    from recbole_ext.serving.recommend import recommend

    args = build_parser().parse_args(argv)
    if args.k < 1:
        raise UserError(f"--k must be >= 1, got {args.k}")
    if args.patient is not None:
        result = recommend(args.checkpoint, patient=args.patient)
        if args.json:
            print(json.dumps(result.as_dict()))
            return 0
        print(f"recommended medications (probability >= {result.threshold:g}): {len(result.medications)}")
        for code, prob, name in zip(result.medications, result.probabilities,
                                    result.names or [""] * len(result.medications)):
            print(f"{code}\t{prob:.4f}" + (f"\t{name}" if name else ""))
        if result.ddi_pairs:
            print(f"WARNING: {len(result.ddi_pairs)} drug-drug interaction pair(s) in this set:")
            for a, b in result.ddi_pairs:
                print(f"DDI\t{a}\t{b}")
        else:
            print("no drug-drug interaction pair in this set")
        return 0
    users = args.user if args.user else read_users_file(args.users_file)
    results = recommend(args.checkpoint, users=users, k=args.k, keep_seen=args.keep_seen,
                        rebuild_index=args.rebuild_index, faiss_index=args.faiss_index, nprobe=args.nprobe,
                        ef_search=args.ef_search)
    for rec in results:
        if args.json:
            print(json.dumps(rec.as_dict()))
            continue
        print(f"user {rec.user}: top-{len(rec.items)}")
        for rank, (item, score) in enumerate(zip(rec.items, rec.scores), start=1):
            print(f"{rank}\t{item}\t{score:.4f}")
    return 0
