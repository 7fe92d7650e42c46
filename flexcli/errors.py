"""The one exception type the CLI turns into a one-line message and exit code 2."""


class FlexcliError(Exception):
    """A user-facing error: what went wrong and what to do about it."""

    def __init__(self, problem: str, fix: str = ""):
        self.problem = problem.rstrip(".")
        self.fix = fix
        super().__init__(self.line())

    def line(self) -> str:
        return f"{self.problem}; {self.fix}" if self.fix else self.problem
