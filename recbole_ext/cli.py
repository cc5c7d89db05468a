"""``python run.py`` -- train/evaluate, or one of the subcommands.

    python run.py --model=BPR --dataset=ml-100k [--any_recbole_key=value ...] [--config_files=a.yaml,b.yaml] [--verbose]
    python run.py list {models,datasets,metrics} [--task mmrec|medrec|general] [--json|--markdown]
    python run.py prepare {mmrec,amazon,synthetic-mm,ml-100k-mm,mimic3,mimic4,synthetic-ehr,recbole,catalogue} ...
    python run.py recommend --checkpoint PATH (--user TOKEN | --users-file FILE | --all-users | --patient FILE.json) [--k K] [--out FILE]
    python run.py leaderboard SPEC.yaml [--workers N] [--backend local|ray] [--out DIR]
    python run.py resume RUN_DIR [--epochs N]
    python run.py --version

Without a command, run.py trains the model on the dataset, selects the best epoch on validation and scores the
test split; every other --key=value sets a RecBole or recbole-ext option (defaults: properties/overall.yaml <
properties/dataset/<DATASET>.yaml < properties/model/<MODEL>.yaml). Values are parsed as literals (numbers, lists,
dicts, true/false/none), never evaluated as code. A user mistake prints one line on stderr and exits with status 2.
A run prints one line per epoch, the result table and a summary; --verbose also puts the full log (always in the
run directory's run.log) on the console.
"""
from __future__ import annotations

import sys

from recbole_ext.errors import UserError

SUBCOMMANDS = {
    "list": "recbole_ext.catalog:main",
    "recommend": "recbole_ext.serving.cli:main",
    "leaderboard": "recbole_ext.leaderboard.cli:main",
    "resume": "recbole_ext.resume_command:main",
}
PREPARERS = {
    "mmrec": "recbole_ext.data.prepare.mmrec:main_mmrec",
    "amazon": "recbole_ext.data.prepare.amazon:main",
    "synthetic-mm": "recbole_ext.data.prepare.synthetic_mm:main",
    "ml-100k-mm": "recbole_ext.data.prepare.ml100k_mm:main",
    "mimic3": "recbole_ext.data.prepare.mimic:main_mimic3",
    "mimic4": "recbole_ext.data.prepare.mimic:main_mimic4",
    "synthetic-ehr": "recbole_ext.data.prepare.synthetic_ehr:main",
    "recbole": "recbole_ext.data.prepare.recbole_download:main",
    "catalogue": "recbole_ext.data.prepare.catalogue:main",
}
USAGE = "usage:\n" + __doc__.split("\n\n")[1]
# One line per command and per prepare kind for `run.py --help` and `run.py prepare --help`; a table here, so that
# the overview imports no subcommand (tests/test_cli_help.py checks that every command and kind has its line).
COMMAND_SUMMARIES = {
    "list": "what exists: models, datasets or metrics, with the task each belongs to",
    "prepare": "make a dataset from source files or a generator (`run.py prepare --help` lists the kinds)",
    "recommend": "top-K items for users, or a medication set for a patient, from a run's checkpoint",
    "leaderboard": "run every model x dataset x seed of a spec, then write tables, plots and an HTML page",
    "resume": "continue an interrupted run from its last finished epoch, to the numbers of an uninterrupted one",
}
PREPARE_SUMMARIES = {
    "mmrec": "convert an MMRec folder (<name>.inter, image_feat.npy, text_feat.npy) into a multimodal dataset",
    "amazon": "build a multimodal dataset from raw Amazon review, meta and image files with MMRec's preprocessing",
    "synthetic-mm": "generate a small synthetic multimodal dataset with planted structure",
    "ml-100k-mm": "build the real multimodal ml-100k-mm (title text, genre vectors) from RecBole's ml-100k",
    "mimic3": "build the mimic3 medication dataset from MIMIC-III v1.4 CSVs (credentialed data, not bundled)",
    "mimic4": "build the mimic4 medication dataset from MIMIC-IV hosp/ CSVs (credentialed data, not bundled)",
    "synthetic-ehr": "generate a synthetic medication dataset with planted effects (MIMIC-III scale by default)",
    "recbole": "download one of RecBole's atomic datasets (ml-1m, yelp, ...) from RecBole's own address table",
    "catalogue": "build a multimodal dataset from your own interactions and items tables (text and image files)",
}


def _two_columns(summaries: dict[str, str], names) -> str:
    width = max(map(len, names))
    return "\n".join(f"  {name:<{width}}  {summaries.get(name, '')}".rstrip() for name in names)


def command_names() -> list[str]:
    """Every command, in the order a new user meets them: list, prepare, then the table's."""
    return ["list", "prepare", *(name for name in SUBCOMMANDS if name != "list")]


def overview() -> str:
    """``python run.py --help``: the usage lines, one line per command, and how values are read."""
    return (f"{USAGE}\n\ncommands:\n{_two_columns(COMMAND_SUMMARIES, command_names())}\n\n"
            f"`python run.py COMMAND --help` shows a command's options and their defaults.\n\n"
            f"{__doc__.split(chr(10) * 2, 2)[2].strip()}")


def prepare_overview() -> str:
    """``python run.py prepare --help``: one line per kind of dataset preparation."""
    return ("usage: python run.py prepare KIND [options]\n\nkinds:\n"
            f"{_two_columns(PREPARE_SUMMARIES, list(PREPARERS))}\n\n"
            "`python run.py prepare KIND --help` shows the options of a kind and their defaults.")


# options that may stand alone: ``--verbose`` means ``--verbose=True``
BARE_FLAGS = {"verbose"}


def parse_train_args(argv: list[str]) -> tuple[str, str, dict, list[str]]:
    """``--key=value`` / ``--key value`` pairs -> (model, dataset, config_dict, config_files)."""
    from recbole_ext.options import safe_literal

    values: dict = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--") or arg == "--":
            raise UserError(f"unexpected argument '{arg}'", fix="options look like --key=value; see `python run.py --help`")
        body = arg[2:]
        if "=" in body:
            key, value = body.split("=", 1)
        elif i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            key, value = body, argv[i + 1]
            i += 1
        elif body.replace("-", "_") in BARE_FLAGS:
            key, value = body, "True"
        else:
            raise UserError(f"option --{body} has no value", fix=f"write --{body}=VALUE")
        key = key.replace("-", "_")
        if not key.isidentifier():
            raise UserError(f"'{key}' is not a valid option name", fix="options look like --learning_rate=0.01")
        if key in values and values[key] != value:
            raise UserError(f"option --{key} given twice with different values", fix="give it once")
        values[key] = value
        i += 1
    model = values.pop("model", None)
    dataset = values.pop("dataset", None)
    files = values.pop("config_files", None)
    config_files = [f for f in files.replace(",", " ").split() if f] if files else []
    if not model:
        raise UserError("no model given", fix="pass --model=NAME, e.g. --model=BPR")
    if not dataset:
        raise UserError("no dataset given", fix="pass --dataset=NAME, e.g. --dataset=ml-100k")
    config = {k: safe_literal(v) for k, v in values.items()}
    return model, dataset, config, config_files


def _train(argv: list[str]) -> int:
    from recbole_ext.config_keys import UnknownKeyError
    from recbole_ext.quick_start import run

    model, dataset, config, files = parse_train_args(argv)
    try:
        result = run(model, dataset, config_dict=config, config_files=files)
    except UnknownKeyError as exc:  # the config_dict keys were this command line's --options
        raise exc.for_command_line() from None
    from recbole_ext.utils.distributed import launch_from_environment

    launch = launch_from_environment()
    if launch is None or launch.rank == 0:  # a data-parallel run prints its result once
        print_result(result)
    return 0


def print_result(result, how: str = "") -> None:
    """The end of a run on the console: the result table, then the summary (``how``: e.g. ", resumed")."""
    from recbole_ext.quick_start import result_table, run_summary

    sys.stderr.flush()  # the epoch lines (stderr) before the table (stdout) when both go to one file
    print(f"\n{result.model} on {result.dataset} ({result.task}){how}")
    print(result_table(result))
    print(f"\n{run_summary(result)}")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if not argv or argv[0] in ("-h", "--help", "help"):
            print(overview())
            return 0 if argv else 2
        head = argv[0]
        if head == "--version":
            from recbole_ext.version import version_line

            print(version_line())
            return 0
        if head == "prepare":
            if argv[1:2] in (["-h"], ["--help"]):
                print(prepare_overview())
                return 0
            if len(argv) < 2 or argv[1] not in PREPARERS:
                raise UserError(f"prepare needs a kind: {', '.join(PREPARERS)}",
                                fix="e.g. `python run.py prepare synthetic-mm --name synth-mm`")
            return _dispatch(PREPARERS[argv[1]], argv[2:])
        if head in SUBCOMMANDS:
            return _dispatch(SUBCOMMANDS[head], argv[1:])
        if not head.startswith("--"):
            raise UserError(f"unknown command '{head}'",
                            fix=f"use --model=... --dataset=..., or one of: prepare, {', '.join(SUBCOMMANDS)}")
        if "-h" in argv or "--help" in argv:  # `run.py --model=BPR --help`: the training options are the overview's
            print(overview())
            return 0
        return _train(argv)
    except UserError as exc:
        print(exc.one_line(), file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:  # a run's RunInterrupted says where it stopped and how to resume it
        print(f"error: {str(exc) or 'interrupted'}", file=sys.stderr)
        return 130


def _dispatch(spec: str, argv: list[str]) -> int:
    from recbole_ext.registry import load_object

    module_name = spec.split(":")[0]
    try:
        fn = load_object(spec)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name) and exc.name.startswith("recbole_ext."):
            raise UserError(f"this command is not available in this build ({module_name} is missing)",
                            fix="update recbole-ext") from None
        raise
    rc = fn(argv)
    return 0 if rc is None else int(rc)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
