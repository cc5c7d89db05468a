"""``python run.py recommend``: top-K items for users, or a medication set for a patient.

    recommend --checkpoint PATH --user TOKEN [--user TOKEN ...] [--k 20] [--keep-seen] [--json] [--out FILE]
              [--skip-unknown] [--show-field FIELD] [--index FACTORY] [--nprobe N] [--ef-search N] [--rebuild-index]
    recommend --checkpoint PATH --users-file FILE            (one user token per line, answered in one batch)
    recommend --checkpoint PATH --all-users --out FILE.csv   (every user of the training data)
    recommend --checkpoint PATH --patient FILE.json [--threshold P] [--k K]   (medication models)

PATH is a run's model.pth or the run directory; a run that did not complete is refused unless --allow-incomplete.
Results go to stdout after a header line naming the model, data and run (with --json the header and every
warning go to stderr, so stdout stays one JSON object per line), or with --out to one file.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from recbole_ext.errors import UserError
from recbole_ext.utils.argparsing import CommandParser, DefaultsHelpFormatter

DEFAULT_K = 20

EPILOG = """\
patient file (--patient): the patient's visits, oldest first; medications are recommended for the LAST visit
(its "medications", if any, are ignored; earlier visits' medications are model input). Codes are those of the
dataset's vocabulary files (<dataset>.diagvoc / .procvoc / .medvoc); ICD codes may be written with or without
their dot (995.91 = 99591). Example (valid for mimic3-demo: examples/patient-mimic3-demo.json; for synth-ehr-small
see examples/patient.json):

  {"visits": [
    {"diagnoses": ["995.91", "5672"], "procedures": ["38.93"], "medications": ["N02B", "A01A"]},
    {"diagnoses": ["414.01", "428.0"], "procedures": ["3995"]}
  ]}

patients: the recommended set is every medication with probability >= --threshold (default: the run's
medrec_threshold, else 0.5), most probable first; --k keeps at most K of them (top-K among those above the
threshold; --threshold 0 --k K gives the K most probable).

runs: a checkpoint whose run is interrupted, failed or still running (its status.json) is the best epoch so far,
not the run's result: it is refused unless --allow-incomplete (then served with a warning). A model.pth with no
status.json or result.json beside it (copied out of its run directory) is served with a warning.
"""

# Options of top-K serving that mean nothing for a patient (refused with --patient rather than ignored).
USER_ONLY = {"keep_seen": "--keep-seen", "rebuild_index": "--rebuild-index", "faiss_index": "--index",
             "nprobe": "--nprobe", "ef_search": "--ef-search", "skip_unknown": "--skip-unknown",
             "show_field": "--show-field"}


class _HelpFormatter(DefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults shown, and the epilog's example JSON kept as written (not re-wrapped)."""


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(prog="run.py recommend", epilog=EPILOG, formatter_class=_HelpFormatter,
                     description="Top-K items for users, or a medication set for a patient, from a checkpoint.")
    parser.add_argument("--checkpoint", required=True, metavar="PATH",
                        help="checkpoint file of a finished run (model.pth), or its run directory")
    who = parser.add_mutually_exclusive_group(required=True)
    who.add_argument("--user", action="append", metavar="TOKEN", help="external user token (repeatable)")
    who.add_argument("--users-file", metavar="FILE", help="text file, one user token per line")
    who.add_argument("--all-users", action="store_true", help="every user of the training data (use with --out)")
    who.add_argument("--patient", metavar="FILE.json", help="JSON file of a patient's visits (medication models; "
                     "format below)")
    parser.add_argument("--k", type=int, metavar="K", help=f"items per user (default: {DEFAULT_K}); for a patient, "
                        "at most K medications, the most probable above the threshold (default: no cap)")
    parser.add_argument("--threshold", type=float, metavar="P", help="patients: probability cut-off of the "
                        "recommended set (default: the run's medrec_threshold, else 0.5)")
    parser.add_argument("--keep-seen", action="store_true", help="do not exclude the user's training items")
    parser.add_argument("--skip-unknown", action="store_true",
                        help="answer the known users and list the unknown ones on stderr (default: refuse)")
    parser.add_argument("--show-field", metavar="FIELD", help="column of the dataset's .item file shown beside each "
                        "item (default: a title-like text column such as movie_title, if any; none: no column)")
    parser.add_argument("--out", metavar="FILE", help="write every result to FILE (.csv, .jsonl or .parquet, by "
                        "suffix; replaced atomically): columns user, rank, item, score (+ the shown field); "
                        "for a patient rank, medication, probability, name")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    parser.add_argument("--allow-incomplete", action="store_true",
                        help="serve the checkpoint of an interrupted, failed or running run (best epoch so far)")
    parser.add_argument("--rebuild-index", action="store_true",
                        help="rebuild the FAISS index beside the checkpoint even if one exists")
    parser.add_argument("--index", dest="faiss_index", metavar="FACTORY", help="FAISS index_factory string (default: the run's "
                        "faiss_index, i.e. Flat = exact); e.g. IVF4096,Flat for catalogues over a million items")
    parser.add_argument("--nprobe", type=int, metavar="N", help="IVF lists probed per query")
    parser.add_argument("--ef-search", type=int, metavar="N", help="HNSW search beam width")
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


def check_arguments(args) -> None:
    """Refuse options that would be ignored, and bad values, before the checkpoint is loaded."""
    from recbole_ext.serving.output import output_format

    if args.k is not None and args.k < 1:
        raise UserError(f"--k must be >= 1, got {args.k}")
    if args.patient is not None:
        given = [flag for dest, flag in USER_ONLY.items() if getattr(args, dest) not in (None, False)]
        if given:
            raise UserError(f"{given[0]} applies to --user/--users-file/--all-users, not to --patient",
                            fix=f"leave {given[0]} out")
        if args.threshold is not None and not 0.0 <= args.threshold <= 1.0:
            raise UserError(f"--threshold must be a probability in [0, 1], got {args.threshold:g}")
    elif args.threshold is not None:
        raise UserError("--threshold applies to --patient (a medication probability cut-off)",
                        fix="use --k to choose how many items each user gets")
    if args.out is not None:
        if args.json:
            raise UserError("--json and --out both choose where results go", fix="give one of them")
        output_format(args.out)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'s' if n != 1 else ''}"


def header(loaded) -> str:
    """``BPR on ml-100k (run runs/BPR-ml-100k-...)``: what answers, and from where."""
    from recbole_ext.run_status import UNKNOWN, checkpoint_status
    from recbole_ext.utils.paths import shown_path

    model, dataset = loaded.config.get("model") or type(loaded.model).__name__, loaded.config.get("dataset")
    # a checkpoint without run status beside it is not a run directory's: name the file itself
    where = (f"checkpoint {shown_path(loaded.path)}" if checkpoint_status(loaded.path)["state"] == UNKNOWN
             else f"run {shown_path(loaded.path.parent)}")
    return f"{model} on {dataset} ({where})"


def main(argv: list[str] | None = None) -> int:
    from recbole_ext.serving.recommend import open_checkpoint

    args = build_parser().parse_args(argv)
    check_arguments(args)
    users = args.user or (read_users_file(args.users_file) if args.users_file else None)
    loaded, note = open_checkpoint(args.checkpoint, patient=args.patient is not None,
                                   allow_incomplete=args.allow_incomplete)
    if note:
        print(f"warning: {note}", file=sys.stderr)
    if args.patient is not None:
        return _serve_patient(args, loaded)
    return _serve_users(args, loaded, users)


def _say(args):
    """Where the header and notes go: stderr under --json (stdout holds only JSON), else stdout."""
    return sys.stderr if args.json else sys.stdout


def _serve_users(args, loaded, users) -> int:
    from recbole_ext.serving.item_features import item_labels
    from recbole_ext.serving.output import write_rows
    from recbole_ext.serving.recommend import ROW_COLUMNS, all_user_tokens, select_users, skipped_note, top_k_items

    users, skipped = select_users(loaded, all_user_tokens(loaded) if args.all_users else users, args.skip_unknown)
    if skipped:
        print(f"warning: {skipped_note(skipped)}", file=sys.stderr)
    labels = item_labels(loaded.config, args.show_field)
    k = DEFAULT_K if args.k is None else args.k
    seen = "training items kept" if args.keep_seen else "training items excluded"
    shown = f", {labels.field} shown" if labels else ""
    print(f"{header(loaded)}: top-{k} for {_plural(len(users), 'user')}, {seen}{shown}", file=_say(args))
    results = top_k_items(loaded, users, k=k, keep_seen=args.keep_seen, rebuild_index=args.rebuild_index,
                          index_options={"faiss_index": args.faiss_index, "faiss_nprobe": args.nprobe,
                                         "faiss_ef_search": args.ef_search}, labels=labels)
    if args.out is not None:
        rows = [row for rec in results for row in rec.rows()]
        column = results[0].label_column() if results else None
        write_rows(args.out, rows, ROW_COLUMNS + ([column] if column else []))
        print(f"wrote {_plural(len(rows), 'row')} ({_plural(len(results), 'user')}) to {args.out}")
        return 0
    for rec in results:
        if args.json:
            print(json.dumps(rec.as_dict()))
            continue
        print(f"user {rec.user}: top-{len(rec.items)}")
        for row in rec.rows():
            label = row.get(rec.label_column()) if labels else None
            print(f"{row['rank']}\t{row['item']}\t{row['score']:.4f}" + (f"\t{label}" if label is not None else ""))
    return 0


def _serve_patient(args, loaded) -> int:
    from recbole_ext.serving.output import write_rows
    from recbole_ext.serving.recommend import MEDICATION_COLUMNS, medication_set

    result = medication_set(loaded, args.patient, threshold=args.threshold, k=args.k)
    source = "" if args.threshold is not None else " (the run's threshold)"
    cap = f", at most {result.k}" if result.k is not None else ""
    print(f"{header(loaded)}: medications for the last visit in {args.patient}, probability >= "
          f"{result.threshold:g}{source}{cap}", file=_say(args))
    if args.out is not None:
        write_rows(args.out, result.rows(), MEDICATION_COLUMNS)
        print(f"wrote {_plural(len(result.medications), 'row')} to {args.out}")
    elif args.json:
        print(json.dumps(result.as_dict()))
        return 0
    else:
        print(f"recommended medications: {len(result.medications)}")
        for code, prob, name in zip(result.medications, result.probabilities,
                                    result.names or [""] * len(result.medications)):
            print(f"{code}\t{prob:.4f}" + (f"\t{name}" if name else ""))
    if result.ddi_pairs:
        print(f"WARNING: {len(result.ddi_pairs)} drug-drug interaction pair(s) in this set:", file=_say(args))
        for a, b in result.ddi_pairs:
            print(f"DDI\t{a}\t{b}", file=_say(args))
    else:
        print("no drug-drug interaction pair in this set", file=_say(args))
    return 0
