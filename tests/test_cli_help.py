"""Discoverability: every command answers --help with its defaults, docs/cli.md is what they print, and the Python
API's functions are the implementations (real signatures and docstrings) while `import recbole_ext` stays light."""
from __future__ import annotations

import argparse
import inspect
import subprocess
import sys

import pytest

from recbole_ext import cli
from recbole_ext.cli_reference import REFERENCE_PATH, command_output

HELP_COMMANDS = [["--help"], ["--model=BPR", "--help"]] + [[name, "--help"] for name in cli.command_names()] + \
                [["prepare", kind, "--help"] for kind in cli.PREPARERS]


def _parsers_printing_help(argv: list[str], monkeypatch) -> list[argparse.ArgumentParser]:
    """The argparse parsers that print help while `run.py ARGV` runs (none for the CLI's own overviews)."""
    printed = []
    original = argparse.ArgumentParser.print_help

    def recording(self, file=None):
        printed.append(self)
        original(self, file)

    monkeypatch.setattr(argparse.ArgumentParser, "print_help", recording)
    command_output(argv)  # raises unless the command exits with status 0
    return printed


@pytest.mark.parametrize("argv", HELP_COMMANDS, ids=" ".join)
def test_every_command_and_prepare_kind_answers_help_with_its_defaults(argv, monkeypatch):
    parsers = _parsers_printing_help(argv, monkeypatch)
    text = command_output(argv)
    assert text.startswith("usage")
    for parser in parsers:
        flat = " ".join(parser.format_help().split())  # argparse wraps "(default: X)" across lines
        valued = [a for a in parser._actions if a.option_strings and a.nargs != 0 and a.help != argparse.SUPPRESS
                  and a.default not in (None, argparse.SUPPRESS)]
        for action in valued:
            assert f"(default: {action.default})" in flat, (argv, action.option_strings)


def test_help_shows_defaults_where_there_are_some(monkeypatch):
    text = " ".join(command_output(["prepare", "synthetic-ehr", "--help"]).split())
    assert "--patients PATIENTS patients to generate (default: 6350)" in text
    assert "(default: 20)" in " ".join(command_output(["recommend", "--help"]).split())


def test_overviews_give_every_command_and_prepare_kind_one_line():
    assert set(cli.COMMAND_SUMMARIES) == set(cli.command_names())
    assert set(cli.PREPARE_SUMMARIES) == set(cli.PREPARERS)
    overview = command_output(["--help"]).splitlines()
    for name in cli.command_names():
        assert any(line.split()[:1] == [name] and cli.COMMAND_SUMMARIES[name] in line for line in overview), name
    kinds = command_output(["prepare", "--help"]).splitlines()
    for kind in cli.PREPARERS:
        assert any(line.split()[:1] == [kind] and cli.PREPARE_SUMMARIES[kind] in line for line in kinds), kind


def test_help_exits_0_from_the_shell(repo_root):
    """argparse ends --help with SystemExit(0), which must reach the shell as status 0 (in-process checks above)."""
    proc = subprocess.run([sys.executable, str(repo_root / "run.py"), "prepare", "mimic3", "-h"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.startswith("usage: run.py prepare mimic3") and not proc.stderr


def test_docs_cli_md_is_what_the_commands_print(repo_root):
    # a fresh interpreter: models other tests register at run time would show in its `list models` example
    code = "import sys; from recbole_ext.cli_reference import render_reference; sys.stdout.write(render_reference())"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=repo_root, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert REFERENCE_PATH.read_text(encoding="utf-8") == proc.stdout, \
        "docs/cli.md is stale: run `python -m recbole_ext.cli_reference --write`"


def test_public_functions_are_the_implementations():
    import recbole_ext
    from recbole_ext.quick_start import run
    from recbole_ext.serving.recommend import recommend

    for public, implementation in ((recbole_ext.run, run), (recbole_ext.recommend, recommend)):
        assert public is implementation
        assert inspect.signature(public) == inspect.signature(implementation)
        assert public.__doc__ == implementation.__doc__ and public.__doc__
    assert set(recbole_ext.__all__) <= set(dir(recbole_ext))
    for name in recbole_ext.__all__:
        assert getattr(recbole_ext, name) is not None
    with pytest.raises(AttributeError):
        recbole_ext.no_such_function  # noqa: B018


def test_help_on_the_api_shows_parameters_without_loading_serving_at_import(repo_root):
    code = ("import sys, pydoc, recbole_ext\n"
            "assert 'recbole_ext.serving' not in sys.modules\n"
            "print(pydoc.render_doc(recbole_ext.recommend, renderer=pydoc.plaintext))\n"
            "print(pydoc.render_doc(recbole_ext.run, renderer=pydoc.plaintext))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=repo_root, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "recommend(checkpoint, users=None, k: 'int | None' = None, keep_seen: 'bool' = False" in proc.stdout
    assert "run(model: 'str', dataset: 'str', config_dict: 'dict | None' = None" in proc.stdout
    assert "Top-``k`` items (default 20) for ``users``" in proc.stdout and "select on validation" in proc.stdout
