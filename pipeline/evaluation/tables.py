"""A table of text cells, rendered for a terminal, as Markdown or as CSV.

Why plain Python: the console commands print small tables; aligned columns need a dozen lines, and
the output stays exactly the same whatever rendering library happens to be installed.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field

COLUMN_GAP = "  "


@dataclass(frozen=True)
class Table:
    """Rows of text cells under named columns.

    Attributes:
        columns: The column titles.
        rows: One tuple of cells per row, as many as there are columns.
        right_aligned: Titles of the columns aligned right (numbers) in the terminal and in Markdown.
    """

    columns: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    right_aligned: frozenset[str] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        for row in self.rows:
            if len(row) != len(self.columns):
                raise ValueError(f"a row has {len(row)} cells for {len(self.columns)} columns: {row}")


def render_text(table: Table) -> str:
    """Aligned columns under a dashed rule, for a terminal.

    Args:
        table: The table.

    Returns:
        The lines, each ending in a newline, without trailing spaces.
    """
    widths = [max([len(title)] + [len(row[index]) for row in table.rows]) for index, title in enumerate(table.columns)]

    def line(cells: tuple[str, ...]) -> str:
        padded = [
            cell.rjust(width) if title in table.right_aligned else cell.ljust(width)
            for cell, width, title in zip(cells, widths, table.columns, strict=True)
        ]
        return COLUMN_GAP.join(padded).rstrip() + "\n"

    rule = COLUMN_GAP.join("-" * width for width in widths) + "\n"
    return line(table.columns) + rule + "".join(line(row) for row in table.rows)


def render_markdown(table: Table) -> str:
    """A GitHub-flavoured Markdown table (`|` in cells escaped).

    Args:
        table: The table.

    Returns:
        The Markdown lines, each ending in a newline.
    """

    def line(cells: tuple[str, ...]) -> str:
        return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |\n"

    rule = "|" + "|".join("---:" if title in table.right_aligned else "---" for title in table.columns) + "|\n"
    return line(table.columns) + rule + "".join(line(row) for row in table.rows)


def render_csv(table: Table) -> str:
    """CSV with a header row (quoted where the csv module needs to, `\\n` line ends).

    Args:
        table: The table.

    Returns:
        The CSV text.
    """
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(table.columns)
    writer.writerows(table.rows)
    return buffer.getvalue()
