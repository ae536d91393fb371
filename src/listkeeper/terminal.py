"""What the command line shows people: tables on stdout, progress bars on stderr.

Tables are drawn with rules on a terminal and as plain aligned columns when stdout is a pipe or a
file, so scripts can split the lines. Progress bars go to stderr and appear only when stderr is a
terminal (or when asked for), so they never mix with what a command prints for machines."""

from __future__ import annotations

import io
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # rich is imported when something is shown: most commands start faster without it
    from rich.console import Group, RenderableType
    from rich.progress import Progress

PLAIN_WIDTH = 10_000  # a pipe has no width: never wrap or shorten a cell there


@dataclass(frozen=True)
class Column:
    header: str
    align: str = "left"  # "right" for counts


def table(columns: Sequence[Column], rows: Iterable[Sequence[object]], indent: int = 0) -> RenderableType:
    """Rows under a header; each value shown with str()."""
    from rich import box
    from rich.padding import Padding
    from rich.table import Table
    from rich.text import Text
    grid = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, padding=(0, 1), header_style="bold")
    for column in columns:
        grid.add_column(column.header, justify=column.align, no_wrap=True)  # type: ignore[arg-type]
    for row in rows:
        grid.add_row(*(Text(str(value)) for value in row))
    return Padding(grid, (0, 0, 0, indent), expand=False) if indent else grid


def lines(*items: RenderableType | str) -> Group:
    """Text lines and tables, one after the other, as one thing to show."""
    from rich.console import Group
    from rich.text import Text
    return Group(*(Text(item) if isinstance(item, str) else item for item in items))


def plain(renderable: RenderableType) -> str:
    """As it reads in a pipe: no colour, no rules, no trailing blanks."""
    from rich.console import Console
    out = io.StringIO()
    Console(file=out, width=PLAIN_WIDTH, color_system=None, force_terminal=False, legacy_windows=False,
            emoji=False, highlight=False).print(_unruled(renderable))
    return "\n".join(line.rstrip() for line in out.getvalue().splitlines())


def _unruled(renderable: RenderableType) -> RenderableType:
    from rich.console import Group
    from rich.padding import Padding
    from rich.table import Table
    if isinstance(renderable, Table):
        renderable.box = None
        renderable.padding = (0, 1)
    elif isinstance(renderable, Padding):
        _unruled(renderable.renderable)
    elif isinstance(renderable, Group):
        for item in renderable.renderables:
            _unruled(item)
    return renderable


def show(renderable: RenderableType) -> None:
    """Print to stdout: drawn on a terminal, plain otherwise."""
    if sys.stdout.isatty():
        from rich.console import Console
        console = Console(highlight=False)
        needed = console.measure(renderable, options=console.options.update_width(PLAIN_WIDTH)).maximum
        if needed > console.width:  # rich would shorten values and drop columns: let the terminal wrap instead
            console = Console(highlight=False, width=needed)
        console.print(renderable)
    else:
        sys.stdout.write(plain(renderable) + "\n")
        sys.stdout.flush()


def wants_progress(forced: bool | None) -> bool:
    """--progress / --no-progress win; otherwise a bar only when stderr is a terminal."""
    return sys.stderr.isatty() if forced is None else forced


def progress(enabled: bool, *, unit: str = "") -> Progress:
    """A progress bar on stderr; a no-op when not enabled."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    console = Console(stderr=True, force_terminal=enabled or None)
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn(unit), TimeElapsedColumn(), console=console, disable=not enabled,
                    transient=False, refresh_per_second=8)
