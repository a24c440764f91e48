"""The one error type a user can cause and fix: a wrong flag, a missing or unreadable data set, a non-finite loss,
a missing Hub token. `common.cli.run_cli` prints it as one line (`error: ...`) and exits with status 2; anything else
is a bug and keeps its traceback."""


class UserError(Exception):
    """A mistake the user can fix, stated in one line that says what to do."""
