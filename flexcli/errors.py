"""The one exception type the CLI turns into a one-line message and exit code 2."""


class FlexcliError(Exception):
    """A user-facing error: what went wrong and what to do about it."""

    def __init__(self, problem: str, fix: str = ""):
        self.problem = problem.rstrip(".")
        self.fix = fix
        super().__init__(self.line())

    def line(self) -> str:
        return f"{self.problem}; {self.fix}" if self.fix else self.problem


class Interrupted(KeyboardInterrupt):
    """An interrupt (SIGINT, or SIGTERM through the CLI) with what the run left behind and how to continue.

    The CLI prints it as one line and exits with 128 + the signal number (130 for SIGINT, 143 for SIGTERM).
    """

    def __init__(self, detail: str = "", signum: int = 2):
        self.detail = detail
        self.signum = signum
        super().__init__(detail)
