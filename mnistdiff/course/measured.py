"""What the book quotes from its measurement files (``results/book/*.json``), so that a chapter reads one name.

Benchmarks and evaluation scripts write those files (each names its CPU and date); a chapter shows them through
these functions instead of assembling paths and schemas itself, and says "not measured yet" where a file is absent.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from mnistdiff.evaluation.report import results_dir

__all__ = ["book_result", "time_to_quality_table", "not_measured", "NOT_MEASURED"]


def not_measured(script: str) -> str:
    """What a page says where ``benchmarks/<script>.py`` has not written its file yet."""
    return f"*Not measured yet* (`benchmarks/{script}.py` writes it)."


NOT_MEASURED = not_measured("time_to_quality")


def book_result(name: str) -> dict[str, Any] | None:
    """The measured document ``results/book/<name>`` (a JSON file), or ``None`` where it is not measured yet."""
    path = results_dir() / "book" / name
    return json.loads(path.read_text()) if path.is_file() else None


def time_to_quality_table(files: Mapping[str, str], model: str = "model") -> str:
    """A Markdown table of the last snapshot of each ``benchmarks/time_to_quality.py`` file (label → file name in
    ``results/book/``): training minutes and FID over its real floor at the same n, in both feature spaces."""
    rows = []
    for label, name in files.items():
        doc = book_result(name)
        if doc is not None:
            last, floor = doc["snapshots"][-1], doc["floor"]
            rows.append(f"| {label} | {last['training_seconds'] / 60:.1f} | {doc['n']:,} | "
                        f"{last['fid']:.3f} ({last['fid'] / floor['fid']:.2f}×) | "
                        f"{last['fid_resnet']:.3f} ({last['fid_resnet'] / floor['fid_resnet']:.2f}×) |")
    if not rows:
        return NOT_MEASURED
    head = (f"| {model} | training min | n | classifier FID (× floor) | ResNet FID (× floor) |\n"
            "| --- | --- | --- | --- | --- |\n")
    return head + "\n".join(rows)
