"""Rich tables in the terminal: the same views as the report, for the person who ran the test."""

from __future__ import annotations

from typing import TYPE_CHECKING

from loadtest.analysis import views

if TYPE_CHECKING:  # pragma: no cover
    from rich.console import Console

    from loadtest.analysis.result import Analysis

STYLE = {"good": "green", "bad": "red", "muted": "dim", "": ""}


def _rich_table(view: views.View):
    from rich.table import Table
    from rich.text import Text

    table = Table(title=view.title, title_justify="left", title_style="bold", header_style="bold cyan",
                  caption=view.caption, caption_justify="left", caption_style="dim", expand=False)
    for i, header in enumerate(view.headers):
        table.add_column(header, justify="left" if i < 2 else "right", overflow="fold")
    for r, row in enumerate(view.rows):
        styles = view.styles[r] if view.styles and r < len(view.styles) else [""] * len(row)
        table.add_row(*(Text(cell, style=STYLE.get(s, s)) for cell, s in zip(row, styles)))
    return table


def render_terminal(analysis: "Analysis", console: "Console", *, steps: bool = True) -> None:
    """Print the verdict and every table of an analysis."""
    from rich.panel import Panel

    console.print(Panel(analysis.verdict, title=f"[bold]{analysis.run_id}[/]: teacher vs student", border_style="cyan"))
    for view in views.all_views(analysis):
        if not view.rows or (view.key == "steps" and not steps):
            continue
        console.print(_rich_table(view))
        console.print()
    console.print(views.significance_line(analysis), style="dim")
    for note in analysis.notes:
        console.print(f"note: {note}", style="yellow")
    if analysis.report_path is not None:
        console.print(f"tables: {analysis.tables_dir}   report: {analysis.report_path}")
