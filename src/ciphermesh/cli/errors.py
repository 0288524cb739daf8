"""The one error type a command raises to end with a message and a non-zero status."""


class CliError(Exception):
    """A user-facing failure: printed as one line on stderr, then exit with `exit_code`."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code
