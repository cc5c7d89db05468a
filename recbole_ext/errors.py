"""One exception type for user mistakes, and the ``python -m`` entry that reports them.

The CLI prints ``error: <message>`` (plus ``fix: <hint>``) on stderr and exits with status 2. Anything else that
escapes is a bug in recbole-ext and keeps its traceback.
"""
import sys


class UserError(Exception):
    """A mistake the user can fix: bad input file, unknown name, wrong option value."""

    # False for a failure reported in one line that no input caused (a peer process of a distributed run died):
    # the run directory then stays, marked failed, instead of being removed as after a refused input
    mistake = True

    def __init__(self, message: str, fix: str | None = None):
        self.message = " ".join(str(message).split())  # one line, always
        self.fix = " ".join(str(fix).split()) if fix else None
        super().__init__(self.message if not self.fix else f"{self.message} (fix: {self.fix})")

    def one_line(self) -> str:
        return f"error: {self.message}" + (f" -- fix: {self.fix}" if self.fix else "")


def run_as_script(main_fn) -> None:
    """``python -m <module>`` entry for a command's ``main``: the same one-line errors and exit codes as run.py.

    It lives here, below every command, so that a command module (recbole_ext/grid_search.py, the leaderboard's
    cli) need not import the top-level CLI for it."""
    try:
        rc = main_fn()
    except UserError as exc:
        print(exc.one_line(), file=sys.stderr)
        sys.exit(2)
    sys.exit(0 if rc is None else int(rc))
