"""Tables: aligned terminal text, Markdown and CSV, exactly."""

from __future__ import annotations

import pytest

from pipeline.evaluation.tables import Table, render_csv, render_markdown, render_text

TABLE = Table(
    columns=("run", "note", "score"),
    rows=(("a1", "plain", "0.9"), ("b22", "has | pipe, comma", "0.8765")),
    right_aligned=frozenset({"score"}),
)


def test_text_aligns_columns_and_right_aligns_numbers() -> None:
    assert render_text(TABLE) == (
        "run  note                score\n"
        "---  -----------------  ------\n"
        "a1   plain                 0.9\n"
        "b22  has | pipe, comma  0.8765\n"
    )


def test_markdown_escapes_pipes_and_right_aligns_numbers() -> None:
    assert render_markdown(TABLE) == (
        "| run | note | score |\n|---|---|---:|\n| a1 | plain | 0.9 |\n| b22 | has \\| pipe, comma | 0.8765 |\n"
    )


def test_csv_quotes_only_where_needed() -> None:
    assert render_csv(TABLE) == 'run,note,score\na1,plain,0.9\nb22,"has | pipe, comma",0.8765\n'


def test_a_row_of_the_wrong_length_is_refused() -> None:
    with pytest.raises(ValueError, match=r"a row has 2 cells for 3 columns: \('x', 'y'\)"):
        Table(columns=("a", "b", "c"), rows=(("x", "y"),))
