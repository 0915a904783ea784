"""The `loadtest` command line: a thin typer shell over the library.

Each area registers its own commands (``register(app)`` in its ``commands`` module) so this file stays
small. Command modules import heavy libraries (torch, onnxruntime, pandas) inside the command bodies:
``loadtest --help`` must answer instantly.
"""

from __future__ import annotations

import importlib
import os
import sys

import typer
from rich.console import Console

from loadtest.errors import LoadtestError

app = typer.Typer(
    name="loadtest",
    help="Decide, with measured numbers, whether a distilled student can replace its teacher on Triton.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)

# Order is the order of `loadtest --help`: the pipeline a user walks through.
COMMAND_MODULES = (
    "loadtest.demo",
    "loadtest.genpair.commands",
    "exporters.commands",
    "loadtest.serving.commands",
    "loadtest.load.commands",
    "loadtest.analysis.commands",
    "loadtest.quality.commands",
    "loadtest.observability.commands",
)

for _module in COMMAND_MODULES:
    importlib.import_module(_module).register(app)


def main() -> None:
    """Console entry point: user errors become one red line and exit status 2, never a traceback."""
    # Library chatter (tqdm bars from transformers' saves, hub notices) would drown our own progress.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    try:
        # standalone_mode=False returns a command's exit code instead of raising it: pass it on.
        sys.exit(app(standalone_mode=False) or 0)
    except LoadtestError as exc:
        Console(stderr=True).print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        Console(stderr=True).print("[yellow]interrupted[/]")
        sys.exit(130)
    except SystemExit:
        raise
    except Exception as exc:  # click's own usage errors carry their exit code
        import click

        if isinstance(exc, click.exceptions.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        if isinstance(exc, click.exceptions.Abort):
            sys.exit(130)
        raise


if __name__ == "__main__":
    main()
