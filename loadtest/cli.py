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


DEBUG_FLAG = "--debug"


def report_error(message: str, debug: bool = False) -> None:
    """One red line on stderr (``--debug``: and the traceback)."""
    from loadtest.console import print_error

    print_error(message)
    if debug:
        import traceback

        traceback.print_exc()


def _environment_error(exc: BaseException) -> str | None:
    """A one-line message for errors the user's files or machine cause (else None: a bug, keep the traceback)."""
    if isinstance(exc, UnicodeDecodeError):
        return (
            f"a file given is not UTF-8 text (byte {exc.start}: {exc.reason}); "
            "pass the text file itself (binary or other-encoding files cannot be read)"
        )
    if isinstance(exc, OSError) and exc.filename is not None:
        return f"{exc.filename}: {exc.strerror or exc}; check the path exists and is writable/readable"
    if isinstance(exc, OSError) and exc.errno is not None:
        return f"{exc.strerror or exc}; check the machine's disk, permissions and ports"
    return None


def run_cli(argv: list[str] | None = None) -> int:
    """Run the CLI on ``argv`` and return its exit status (what ``main`` exits with; tests call it directly).

    User errors (``LoadtestError``, bad files, unwritable paths, click's usage errors) print one line and
    return 2; ``--debug`` anywhere on the command line adds the traceback.
    """
    from typer import Abort
    from typer._click.exceptions import ClickException, NoArgsIsHelpError, UsageError

    args = list(sys.argv[1:] if argv is None else argv)
    debug = DEBUG_FLAG in args or os.environ.get("LOADTEST_DEBUG") == "1"
    args = [a for a in args if a != DEBUG_FLAG]
    try:
        # standalone_mode=False returns a command's exit code instead of raising it: pass it on.
        return app(args=args, prog_name="loadtest", standalone_mode=False) or 0
    except LoadtestError as exc:
        report_error(str(exc), debug)
        return 2
    except KeyboardInterrupt:
        Console(stderr=True).print("[yellow]interrupted[/]")
        return 130
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except Abort:
        return 130
    except NoArgsIsHelpError as exc:
        exc.show()
        return 0
    except ClickException as exc:
        if isinstance(exc, UsageError):
            hint = f" (see: {exc.ctx.command_path} --help)" if exc.ctx else ""
            report_error(f"{exc.format_message()}{hint}", debug)
        else:
            report_error(exc.format_message(), debug)
        return 2 if exc.exit_code in (1, 2) else exc.exit_code
    except Exception as exc:
        message = _environment_error(exc)
        if message is None:
            raise
        report_error(message + ("" if debug else " (--debug shows the traceback)"), debug)
        return 2


def main() -> None:
    """Console entry point: user errors become one red line and exit status 2, never a traceback."""
    # Library chatter (tqdm bars from transformers' saves, hub notices) would drown our own progress.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    sys.exit(run_cli())


if __name__ == "__main__":
    main()
