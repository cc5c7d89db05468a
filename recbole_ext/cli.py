"""``python run.py`` -- train/evaluate, or one of the subcommands.

    python run.py --model=BPR --dataset=ml-100k [--any_recbole_key=value ...] [--config_files=a.yaml,b.yaml]
    python run.py prepare {mmrec,synthetic-mm,mimic3,mimic4,synthetic-ehr} ...
    python run.py recommend --checkpoint PATH (--user TOKEN | --users-file FILE | --patient FILE.json) [--k 20] [--keep-seen] [--json]
    python run.py leaderboard SPEC.yaml [--workers N] [--backend local|ray] [--out DIR]
    python run.py --version

Values are parsed as literals (numbers, lists, dicts, true/false/none), never evaluated as code. A user mistake
prints one line on stderr and exits with status 2.
"""
from __future__ import annotations

import sys

from recbole_ext.errors import UserError

SUBCOMMANDS = {
    "recommend": "recbole_ext.serving.cli:main",
    "leaderboard": "recbole_ext.leaderboard.cli:main",
    "resume": "recbole_ext.resume_command:main",
}
PREPARERS = {
    "mmrec": "recbole_ext.data.prepare.mmrec:main_mmrec",
    "synthetic-mm": "recbole_ext.data.prepare.synthetic_mm:main",
    "mimic3": "recbole_ext.data.prepare.mimic:main_mimic3",
    "mimic4": "recbole_ext.data.prepare.mimic:main_mimic4",
    "synthetic-ehr": "recbole_ext.data.prepare.synthetic_ehr:main",
}
USAGE = "usage:\n" + __doc__.split("\n\n")[1]


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
    from recbole_ext.quick_start import result_table, run

    model, dataset, config, files = parse_train_args(argv)
    result = run(model, dataset, config_dict=config, config_files=files)
    print(f"\n{result.model} on {result.dataset} ({result.task}); run directory: {result.run_dir}")
    print(result_table(result))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if not argv or argv[0] in ("-h", "--help", "help"):
            print(USAGE)
            return 0 if argv else 2
        head = argv[0]
        if head == "--version":
            from recbole_ext.version import version_line

            print(version_line())
            return 0
        if head == "prepare":
            if len(argv) < 2 or argv[1] not in PREPARERS:
                raise UserError(f"prepare needs a kind: {', '.join(PREPARERS)}",
                                fix="e.g. `python run.py prepare synthetic-mm --name synth-mm`")
            return _dispatch(PREPARERS[argv[1]], argv[2:])
        if head in SUBCOMMANDS:
            return _dispatch(SUBCOMMANDS[head], argv[1:])
        if not head.startswith("--"):
            raise UserError(f"unknown command '{head}'",
                            fix=f"use --model=... --dataset=..., or one of: prepare, {', '.join(SUBCOMMANDS)}")
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
