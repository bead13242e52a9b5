"""Result tables: a markdown table from column specifications, and the same rows as CSV.

    columns = [Column("Model", text("model"), align="left"),
               Column("Test NLL/sent.", number("test_nll_per_sentence"))]
    lines = markdown_table(columns, rows)           # ["| Model | Test NLL/sent. |", "|---|---:|", ...]
    write_results(out_dir, "\\n".join(lines), rows)  # results.md and results.csv

A value that is missing (None, or not in the row) shows as ``-`` in markdown and as an empty
field in CSV.
"""

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .logs import duration

MISSING = "-"


def fmt(value, digits=2):
    """``value`` with ``digits`` decimals, ``-`` for None; a string stays as it is."""
    if value is None:
        return MISSING
    return value if isinstance(value, str) else f"{value:.{digits}f}"


def signed(value, digits=2):
    return MISSING if value is None else f"{value:+.{digits}f}"


def count(value):
    return MISSING if value is None else str(int(value))


def elapsed(seconds):
    """``42s``, ``3m05s``, ``1h02m``; ``-`` for None."""
    return MISSING if seconds is None else duration(seconds)


def number(key, digits=2):
    """A cell: ``row[key]`` with ``digits`` decimals."""
    return lambda row: fmt(row.get(key), digits)


def formatted(key, template):
    """A cell: ``row[key]`` through ``template`` (``"{:.3f}"``), ``-`` where missing."""
    return lambda row: MISSING if row.get(key) is None else template.format(row[key])


def text(key):
    return lambda row: MISSING if row.get(key) is None else str(row[key])


@dataclass(frozen=True)
class Column:
    header: str
    cell: Callable[[dict], str]  # row -> cell text
    align: str = "right"  # or "left"


def markdown_table(columns, rows):
    """The table's lines: header, alignment row, one line per row."""
    lines = ["| " + " | ".join(c.header for c in columns) + " |",
             "|" + "".join("---|" if c.align == "left" else "---:|" for c in columns)]
    lines += ["| " + " | ".join(c.cell(row) for c in columns) + " |" for row in rows]
    return lines


def write_csv(path, rows, fields=None):
    """``rows`` (dicts) as CSV; ``fields``: the columns, default every key in order of appearance."""
    if fields is None:
        fields = list(dict.fromkeys(key for row in rows for key in row))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if row.get(k) is None else row[k] for k in fields})


def write_results(out, markdown, rows, fields=None):
    """``out``/results.md (``markdown``) and ``out``/results.csv (``rows``)."""
    out = Path(out)
    (out / "results.md").write_text(markdown)
    write_csv(out / "results.csv", rows, fields)
