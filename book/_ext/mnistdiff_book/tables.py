"""Any JSON value as Markdown tables (the results page; also used for the benchmarks' JSON).

Only the standard library: :func:`render_json` picks a table shape from the value's shape, and
:func:`flatten` lists every number of a value with its path, for the one table of all results.
"""

from __future__ import annotations

import json
import math
from typing import Any, Iterable, Mapping, Sequence

__all__ = ["LONG_LIST", "cell_text", "is_scalar", "table", "summarize", "render_json", "flatten"]

LONG_LIST = 12  # scalar lists longer than this (loss curves, per-epoch values) are summarised

#: Fields that name a list item (``{"sampler": "ddim", ...}`` → ``sampler=ddim``) in :func:`flatten`.
NAME_KEYS = ("name", "model", "method", "sampler", "generator", "label", "steps")


def is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))


def _is_flat_dict(value: Any) -> bool:
    return isinstance(value, Mapping) and all(is_scalar(v) for v in value.values())


def _format_float(value: float) -> str:
    if math.isnan(value) or math.isinf(value):
        return str(value)
    if value != 0 and abs(value) >= 1e4:
        return f"{value:.0f}"
    return f"{value:.4g}"


def cell_text(value: Any) -> str:
    """One table cell: floats to 4 significant digits (whole numbers from 10,000 on), ``—`` for None."""
    if value is None:
        text = "—"
    elif isinstance(value, bool):
        text = "yes" if value else "no"
    elif isinstance(value, int):
        text = str(value)
    elif isinstance(value, float):
        text = _format_float(value)
    elif isinstance(value, str):
        text = value
    else:  # a list or dict inside a table cell
        text = json.dumps(value, ensure_ascii=False)
    return text.replace("|", "\\|").replace("\n", " ")


def summarize(values: Sequence[Any]) -> str:
    """A long list of scalars in one cell: its length, ends and (for numbers) range."""
    if len(values) <= LONG_LIST:
        return ", ".join(cell_text(v) for v in values)
    first, second, last = (cell_text(values[i]) for i in (0, 1, -1))
    text = f"{len(values)} values: {first}, {second}, …, {last}"
    numbers = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if len(numbers) == len(values):
        text += f" (min {cell_text(min(numbers))}, max {cell_text(max(numbers))})"
    return text


def table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A Markdown table; every cell goes through :func:`cell_text`."""
    lines = ["| " + " | ".join(cell_text(h) for h in header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        lines.append("| " + " | ".join(cell_text(v) for v in row) + " |")
    return "\n".join(lines) + "\n"


def _columns(records: Iterable[Mapping[str, Any]]) -> list[str]:
    cols: list[str] = []
    for rec in records:
        for key in rec:
            if key not in cols:
                cols.append(key)
    return cols


def _child(title: str, label: str, level: int, sep: str = " ") -> tuple[str, int]:
    """Heading text and level of a nested value: under the parent's title, one level deeper."""
    return (f"{title}{sep}{label}", level + 1) if title else (label, level)


def _render_list(data: list, heading: str, title: str, level: int) -> str:
    if not data:
        return f"{heading}(empty list)\n"
    if all(_is_flat_dict(item) for item in data):
        cols = _columns(data)
        return heading + table(cols, ([item.get(c) for c in cols] for item in data))
    if all(is_scalar(item) for item in data):
        if len(data) > LONG_LIST:
            return f"{heading}{summarize(data)}\n"
        return heading + table(["value"], ([item] for item in data))
    parts = [heading] if heading else []
    for i, item in enumerate(data):
        parts.append(render_json(item, *_child(title, f"[{i}]", level)))
    return "\n".join(parts)


def _render_mapping(data: Mapping, heading: str, title: str, level: int) -> str:
    if not data:
        return f"{heading}(empty)\n"
    if _is_flat_dict(data):
        return heading + table(["key", "value"], data.items())
    if all(_is_flat_dict(v) for v in data.values()):
        cols = _columns(data.values())
        return heading + table(["name", *cols], ([name, *(rec.get(c) for c in cols)] for name, rec in data.items()))
    scalars = {k: v for k, v in data.items() if is_scalar(v)}
    parts = [heading + (table(["key", "value"], scalars.items()) if scalars else "")]
    for key, value in data.items():
        if not is_scalar(value):
            parts.append(render_json(value, *_child(title, str(key), level, " › ")))
    return "\n".join(p for p in parts if p)


def render_json(data: Any, title: str = "", level: int = 4) -> str:
    """Markdown tables for one JSON value, whatever its shape.

    * a list of flat dicts → one table, one column per key;
    * a flat dict → a key/value table;
    * a dict of name → flat dict → one table, one row per name;
    * a dict mixing scalars and containers → a key/value table of the scalars, then each
      container under its own heading (recursively);
    * a list of scalars → a one-column table (a summary line when longer than
      :data:`LONG_LIST`); a scalar → a line of text.
    """
    heading = f"{'#' * min(level, 6)} {title}\n\n" if title else ""
    if isinstance(data, list):
        return _render_list(data, heading, title, level)
    if isinstance(data, Mapping):
        return _render_mapping(data, heading, title, level)
    return f"{heading}{cell_text(data)}\n"


def _item_label(i: int, item: Any) -> tuple[str, Any]:
    """``name=value`` for a list item with a name-like field (that field then left out), else ``[i]``."""
    if isinstance(item, Mapping):
        for key in NAME_KEYS:
            if is_scalar(item.get(key)) and item.get(key) is not None:
                return f"{key}={cell_text(item[key])}", {k: v for k, v in item.items() if k != key}
    return f"[{i}]", item


def flatten(data: Any, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
    """Every scalar leaf of ``data`` with its path (list items are named by a name-like field)."""
    if is_scalar(data):
        return [(path, data)]
    out: list[tuple[tuple[str, ...], Any]] = []
    if isinstance(data, Mapping):
        for key, value in data.items():
            out.extend(flatten(value, (*path, str(key))))
    elif isinstance(data, list):
        if data and all(is_scalar(v) for v in data):
            return [(path, summarize(data))]
        for i, item in enumerate(data):
            label, rest = _item_label(i, item)
            out.extend(flatten(rest, (*path, label)))
    return out
