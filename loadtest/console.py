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


class LineProgress:
    """``rich.progress.Progress``'s subset our commands use, printed as plain lines for logs (CI, ``| tee``).

    Why: rich draws nothing live when stdout is not a terminal, so ``make demo | tee log`` printed nothing
    for the minutes the pair took to build. A line appears when a task's note or description changes, or
    its completion moves on by ``step`` (a fraction of the total), or ``every_s`` seconds pass, whichever
    comes first (a note that changes on every batch, like a training loss, prints at most every
    ``note_every_s``); each line says the task, its completion and the elapsed time.
    """

    def __init__(self, console, step: float = 0.1, every_s: float = 10.0, note_every_s: float = 3.0):
        self.console = console
        self.step, self.every_s, self.note_every_s = step, every_s, note_every_s
        self.tasks: dict[int, dict] = {}

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        pass

    def stop(self) -> None:
        for task_id in self.tasks:
            self._print(task_id, force=True)

    def add_task(self, description: str, total: float | None = None, **fields) -> int:
        import time

        task_id = len(self.tasks)
        now = time.monotonic()
        self.tasks[task_id] = dict(description=description, total=total, completed=0.0, fields=fields,
                                   started=now, printed_at=now, printed=None)  # fmt: skip
        self._print(task_id, force=True)
        return task_id

    def update(self, task_id: int, *, completed: float | None = None, advance: float | None = None,
               total: float | None = None, description: str | None = None, **fields) -> None:  # fmt: skip
        task = self.tasks[task_id]
        if total is not None:
            task["total"] = total
        if completed is not None:
            task["completed"] = completed
        if advance:
            task["completed"] += advance
        if description is not None:
            task["description"] = description
        task["fields"].update(fields)
        self._print(task_id)

    def advance(self, task_id: int, advance: float = 1) -> None:
        self.update(task_id, advance=advance)

    def _print(self, task_id: int, force: bool = False) -> None:
        import time

        task = self.tasks[task_id]
        now = time.monotonic()
        total = task["total"]
        fraction = task["completed"] / total if total else None
        text = " ".join(str(v) for v in task["fields"].values() if v not in (None, ""))
        state = (task["description"], text)
        last = task["printed"]
        moved = fraction is not None and last is not None and last[2] is not None and fraction - last[2] >= self.step
        renamed = last is not None and state[0] != last[0]
        new_note = last is not None and state != last[:2] and now - task["printed_at"] >= self.note_every_s
        if not (force or last is None or renamed or new_note or moved or now - task["printed_at"] >= self.every_s):
            return
        if last is not None and state == last[:2] and fraction == last[2]:
            return  # nothing new to say
        done = f"{fraction:4.0%}" if fraction is not None else f"{task['completed']:g}"
        line = f"{task['description']}: {done} {text}".rstrip() + f" ({now - task['started']:.0f} s)"
        self.console.print(line, markup=False, highlight=False, emoji=False)
        task["printed"] = (*state, fraction)
        task["printed_at"] = now


def make_progress(*columns, console, **kwargs):
    """A live ``rich`` progress display on a terminal; ``LineProgress`` lines anywhere else."""
    from rich.progress import Progress

    if console.is_terminal:
        return Progress(*columns, console=console, **kwargs)
    return LineProgress(console)


def print_error(message: str) -> None:
    """One red ``error:`` line on stderr, printed as text: no markup, no ``:x:`` emoji, no highlighting."""
    from rich.console import Console
    from rich.text import Text

    console = Console(stderr=True, emoji=False, highlight=False, soft_wrap=True)
    console.print(Text.assemble(("error: ", "bold red"), " ".join(str(message).split())))
