"""``python run.py resume RUN_DIR [--epochs N]``: continue an interrupted run where its resume state left it.

The run goes on in its own directory (``run.log`` grows, ``model.pth`` / ``result.json`` / ``status.json`` are
written there) and ends with the same numbers an uninterrupted run with the same seed would have given. What can
be resumed, and what is refused, is ``recbole_ext.run_status.check_resumable``; the run itself is
``recbole_ext.quick_start.resume``.
"""
from __future__ import annotations

import argparse

from recbole_ext.errors import UserError


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line and exit 2 through the CLI, not argparse's usage dump
        raise UserError(f"resume: {message}", fix="python run.py resume RUN_DIR [--epochs N]")


def main(argv: list[str]) -> int:
    from recbole_ext.quick_start import result_table, resume

    parser = _Parser(prog="python run.py resume", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", help="the folder of the interrupted run (runs/<model>-<dataset>-<time>)")
    parser.add_argument("--epochs", type=int, help="train up to this many epochs in all instead of the configured "
                                                   "number")
    args = parser.parse_args(argv)
    result = resume(args.run_dir, epochs=args.epochs)
    print(f"\n{result.model} on {result.dataset} ({result.task}), resumed; run directory: {result.run_dir}")
    print(result_table(result))
    return 0
