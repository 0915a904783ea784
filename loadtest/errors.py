"""User-facing errors.

Anything a user can cause (a missing directory, a busy port, a typo in a cost file) raises
``LoadtestError`` with a one-line message; the CLI prints it without a traceback and exits 2.
Programming errors stay ordinary exceptions so they keep their tracebacks.
"""


class LoadtestError(Exception):
    """An error caused by the user's input or environment, reported as one line."""
