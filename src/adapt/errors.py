"""The one exception type for user mistakes.

Library code raises `UserError` for anything a user can fix (a bad path, a bad flag, a
malformed row); the CLI prints its message on one line and exits with code 2, never a traceback.
"""


class UserError(Exception):
    """A mistake in the user's input: shown as a one-line error, exit code 2."""

    exit_code = 2
