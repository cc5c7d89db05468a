"""``python run.py resume RUN_DIR [--epochs N]``: continue an interrupted run where its resume state left it.

The run goes on in its own directory (``run.log`` grows, ``model.pth`` / ``result.json`` / ``status.json`` are
written there) and ends with the same numbers an uninterrupted run with the same seed would have given. What can
be resumed, and what is refused, is ``recbole_ext.run_status.check_resumable``; the run itself is
``recbole_ext.quick_start.resume``.
"""
from __future__ import annotations

from recbole_ext.utils.argparsing import CommandParser


def build_parser() -> CommandParser:
    parser = CommandParser(prog="run.py resume", description=__doc__.splitlines()[0].split(": ", 1)[1])
    parser.add_argument("run_dir", metavar="RUN_DIR",
                        help="the folder of the interrupted run (runs/<model>-<dataset>-<time>)")
    parser.add_argument("--epochs", type=int, metavar="N",
                        help="train up to N epochs in all instead of the configured number")
    return parser


def main(argv: list[str]) -> int:
    from recbole_ext.cli import print_result
    from recbole_ext.quick_start import resume

    args = build_parser().parse_args(argv)
    result = resume(args.run_dir, epochs=args.epochs)
    print_result(result, ", resumed")
    return 0
