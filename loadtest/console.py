"""One rich console for the commands' tables, so every command folds (or not) the same way.

Outside a terminal (CI logs, ``| tee``) rich assumes 80 columns and folds our wide tables into columns of
single words; there we print at 160 columns unless ``COLUMNS`` says otherwise.
"""

from __future__ import annotations

import os

LOG_WIDTH = 160


def output_console(stderr: bool = False):
    """A ``rich.console.Console`` on stdout (or stderr) that stays readable when not a terminal."""
    from rich.console import Console

    console = Console(stderr=stderr)
    if console.is_terminal or os.environ.get("COLUMNS"):
        return console
    return Console(stderr=stderr, width=LOG_WIDTH)
