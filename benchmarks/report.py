"""Records to markdown: the one renderer of the suite (``pandas.DataFrame.to_markdown``).

A section returns a ``Result``: its title, its records (what the JSON keeps, exactly as measured), the tables
that show them (``Table``: rows, and the ``Column`` objects that pick and format each cell) and notes. Sections
format numbers (a column's ``format``), never markdown: ``Strong`` marks a headline figure, which this
module renders in bold.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pandas as pd


@dataclass(frozen=True)
class Strong:
    """A headline cell (or part of one): rendered in bold, its value formatted by the column's format."""

    value: Any


@dataclass(frozen=True)
class Column:
    """One column: its header, the cell of each row (a row key, or a function of the row) and the format of
    a number (``str.format``; text cells are kept as they are). ``strong``: every cell is a headline."""

    header: Any
    value: str | Callable[[dict], Any]
    format: str = "{}"
    strong: bool = False


@dataclass
class Table:
    """Rows (dicts) shown through ``columns``."""

    rows: list[dict]
    columns: list[Column]

    def frame(self) -> pd.DataFrame:
        """The table as text cells, one column per ``Column`` (header as rendered)."""
        cells = {}
        for column in self.columns:
            values = [column.value(row) if callable(column.value) else row[column.value] for row in self.rows]
            if column.strong:
                values = [value if isinstance(value, Strong) else Strong(value) for value in values]
            cells[_text(column.header, "{}")] = [_text(value, column.format) for value in values]
        return pd.DataFrame(cells, columns=list(cells))

    def to_markdown(self) -> str:
        return self.frame().to_markdown(index=False, disable_numparse=True)


@dataclass
class Result:
    """What a section returns. ``name``: the records' name in the JSON (the section's; the ViT variants add to
    ``vit``); ``records``: its figures (``None``: the section did not run here, ``notes`` say why)."""

    name: str
    title: str
    records: Any
    tables: list[Table] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _text(value, form: str) -> str:
    if isinstance(value, Strong):
        return f"**{_text(value.value, form)}**"
    if isinstance(value, tuple):
        return "".join(_text(part, "{}") for part in value)
    if isinstance(value, str):
        return value
    return form.format(value)


def render(result: Result) -> str:
    """A section as markdown: its title, its tables, its notes."""
    parts = [f"## {result.title}", ""]
    for table in result.tables:
        parts += [table.to_markdown(), ""]
    parts += [*result.notes, ""] if result.notes else []
    return "\n".join(parts)


def render_document(machine: str, results: list[Result]) -> str:
    """The results file: the machine's line, then every section in the order run."""
    return "\n".join([f"Machine: {machine}", "", *(render(result) for result in results)])


def collect(results: list[Result], machine: str) -> dict:
    """The raw records of ``results`` by name (the JSON beside the markdown); a list under a name that is
    already there (the ViT variants) extends it."""
    data: dict = {"machine": machine}
    for result in results:
        if result.records is None:
            continue
        earlier = data.get(result.name)
        if isinstance(earlier, list) and isinstance(result.records, list):
            data[result.name] = earlier + result.records
        else:
            data[result.name] = result.records
    return data


def write(path: Path, machine: str, results: list[Result]) -> dict:
    """``path`` (markdown) and ``path`` with ``.json`` (the records); returns the records."""
    data = collect(results, machine)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_document(machine, results))
    path.with_suffix(".json").write_text(json.dumps(data, indent=2, default=str))
    return data
