"""The one exception type for bad user input.

Library code raises `InputError` with a one-line message that names the bad value and what is allowed; the
command-line entry points print that line and exit with status 2 (see `src.cli.common.run_cli`).
"""


class InputError(ValueError):
    """Bad input from the user (file, flag, config key, entity name...). The message is one line.

    missing: what the user has not built yet ("kg" or "model"), so that the command line can say how to build it;
    the library itself names no command."""

    def __init__(self, message: str, missing: str | None = None) -> None:
        super().__init__(message)
        self.missing = missing
