"""What a run shows on the console, as opposed to what it writes to its ``run.log``.

A run logs everything (config dump, dataset summary, model structure, RecBole's epoch lines) to ``run.log``. The
console handler lets through only what a person watching needs: records marked :data:`PROGRESS` (one line per
epoch, the line that says where the log is), warnings and errors. ``verbose`` lets every record through, as the
console showed before the quiet default. Colour codes (RecBole's ``set_color``) are removed from the console
output when the stream is not a terminal, so redirected logs read as plain text.
"""
from __future__ import annotations

import logging
import re

# ``logger.info(line, extra=PROGRESS)`` marks a record for the quiet console (it still goes to run.log)
PROGRESS = {"console": True}

# RecBole's RemoveColorFilter pattern (recbole.utils.logger): CSI sequences and the two-byte escapes
_ANSI_ESCAPE = re.compile(r"\x1B(?:[@-Z\\-_]|\[[0-?]*[ -/]*[@-~])")


def strip_ansi(text: str) -> str:
    return _ANSI_ESCAPE.sub("", text)


def is_terminal(stream) -> bool:
    """True when ``stream`` is an open terminal; False for files, pipes, pytest's capture and closed streams."""
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or "I/O operation on closed file"
        return False


class ConsoleFilter(logging.Filter):
    """Quiet: only :data:`PROGRESS` records, warnings and errors pass. Verbose: every record passes."""

    def __init__(self, verbose: bool):
        super().__init__()
        self.verbose = verbose

    def filter(self, record: logging.LogRecord) -> bool:
        return self.verbose or record.levelno >= logging.WARNING or bool(getattr(record, "console", False))


class ConsoleFormatter(logging.Formatter):
    """Quiet: the bare message, warnings and errors prefixed with their level (``warning: ...``). Verbose: the
    time and the message, as before. ``plain`` removes colour codes from the formatted text; it works on the text,
    not on ``record.msg`` (which RecBole's RemoveColorFilter rewrites), so the other handlers see the record as
    logged."""

    def __init__(self, verbose: bool, plain: bool):
        super().__init__("%(asctime)s %(message)s" if verbose else "%(message)s", "%H:%M:%S")
        self.verbose, self.plain = verbose, plain

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        if not self.verbose and record.levelno >= logging.WARNING:
            text = f"{record.levelname.lower()}: {text}"
        return strip_ansi(text) if self.plain else text


def console_handler(stream, verbose: bool) -> logging.Handler:
    """The run's console handler on ``stream`` (see the module docstring)."""
    handler = logging.StreamHandler(stream)
    handler.addFilter(ConsoleFilter(verbose))
    handler.setFormatter(ConsoleFormatter(verbose, plain=not is_terminal(stream)))
    return handler


def format_duration(seconds: float) -> str:
    """``0.8 s``, ``41.8 s``, ``4 min 05 s``, ``2 h 03 min``: as precise as a person reading it needs."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"
