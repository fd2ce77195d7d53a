"""The one exception type users see: its message is a single clear line."""


class GatedgenError(Exception):
    """An error with a one-line message for the user (printed as ``Error: ...``, exit code 1)."""
