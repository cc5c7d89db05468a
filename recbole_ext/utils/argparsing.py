"""The argument parser every ``python run.py`` subcommand uses: defaults shown in ``--help``, mistakes as UserError.

``CommandParser`` differs from ``argparse.ArgumentParser`` in two ways:

* ``--help`` names the default of every option that takes a value (``(default: 20)``), so a user need not read
  the source to know what an omitted option means; flags (``--overwrite``) and options without a default are left
  as written, since "(default: False)" or "(default: None)" would say nothing useful;
* a usage mistake raises a one-line ``UserError`` instead of printing the usage and calling ``sys.exit(2)``, so
  the CLI reports it like every other user mistake (``error: ... -- fix: ...``, exit status 2).
"""
from __future__ import annotations

import argparse

from recbole_ext.errors import UserError


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """Appends ``(default: X)`` to the help of each option that takes a value and has a default."""

    def _get_help_string(self, action):
        text = action.help or ""
        takes_value = action.option_strings and action.nargs != 0
        if takes_value and action.default not in (None, argparse.SUPPRESS) and "%(default)" not in text:
            text += " (default: %(default)s)"
        return text


class CommandParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` with :class:`DefaultsHelpFormatter` and usage errors raised as ``UserError``."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", DefaultsHelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message):
        raise UserError(f"{self.prog}: {message}", fix=f"see `python {self.prog} --help`")
