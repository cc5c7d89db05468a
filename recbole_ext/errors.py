"""One exception type for user mistakes.

The CLI prints ``error: <message>`` (plus ``fix: <hint>``) on stderr and exits with status 2. Anything else that
escapes is a bug in recbole-ext and keeps its traceback.
"""


class UserError(Exception):
    """A mistake the user can fix: bad input file, unknown name, wrong option value."""

    def __init__(self, message: str, fix: str | None = None):
        self.message = " ".join(str(message).split())  # one line, always
        self.fix = " ".join(str(fix).split()) if fix else None
        super().__init__(self.message if not self.fix else f"{self.message} (fix: {self.fix})")

    def one_line(self) -> str:
        return f"error: {self.message}" + (f" -- fix: {self.fix}" if self.fix else "")
