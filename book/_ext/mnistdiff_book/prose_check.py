"""Numbers in the chapters' prose: generated from a run, or facts the chapter's code states.

A chapter's prose may quote a number in two ways:

* **generated**: a code cell whose output is Markdown (``Markdown(f"... {fid:.2f} ...")``) puts the
  value a cell computed into the text, so re-executing the chapter updates the prose;
* **typed**, as a *fact*: the same number is a numeric literal in one of the chapter's code cells
  (``T = 1000``, ``assert alpha_bar[0] == ...``, ``steps=50``), so it is what the code ran with or
  asserted, not a measurement that can go stale.

Anything else (a FID, a time, a share typed into a Markdown cell, or into the literal text of a
generated sentence) is *drift waiting to happen* and :func:`check_notebook` reports it. Left alone:
references (chapter 3, exercise 3.5, Algorithm 1, equation (12), a citation's year), integers 0-10,
digits inside words (``bf16``, ``x0``, ``SD3``), code spans, links, HTML tags, labels, and numbers in
math that have no decimal point (``\\beta_1``, ``10^{-4}``: notation, not measurement).

``python book/_ext/mnistdiff_book/prose_check.py [NOTEBOOK ...]`` prints the counts and every
number it refuses (default: the book's chapters); the exit code is 1 if it refused any.
"""

from __future__ import annotations

import ast
import io
import json
import re
import sys
import tokenize
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Finding", "Report", "check_notebook", "code_facts", "prose_numbers", "main"]

_SUPERSCRIPT = str.maketrans("⁻⁰¹²³⁴⁵⁶⁷⁸⁹", "-0123456789")
# a number: 1,234.5 / 0.127 / 4×10⁴ / 2.4 × 10^4 / 10⁻⁴ ; not a digit glued to a letter or underscore
_NUMBER = re.compile(
    r"(?<![A-Za-z_0-9.])(?P<num>\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?)"
    r"(?P<exp>\s?[×x·]\s?10(?:\^\{?-?\d+\}?|[⁻⁰¹²³⁴⁵⁶⁷⁸⁹]+))?"
    r"(?P<pct>\s?%)?(?![A-Za-z_0-9])"
)
_REFERENCE = re.compile(
    r"(?:\b(?:chapters?|ch\.|exercises?|solutions?|algorithms?|eqs?\.|equations?|sections?|§|figures?|fig\.|"
    r"tables?|appendix|lecture|lab|part|issue)\s+(?:\d+(?:\.\d+)?[a-z]?(?:\s*(?:,|and|-|–|or|to)\s*)?)+"
    r"|§\s?\d+(?:\.\d+)*(?:\s?[–-]\s?\d+(?:\.\d+)*)?|\barXiv:\s?\d{4}\.\d{4,5}"
    r"|\b(?:[A-Z][A-Za-z-]+|et al\.),?\s+\(?(?:19|20)\d{2}[a-z]?\b|\((?:19|20)\d{2}[a-z]?\)"
    r"|^\s*#+\s*\d+(?:\.\d+)*)",
    re.I | re.M,
)
_STRIP = [
    re.compile(r"```.*?```", re.S),  # fenced blocks (directives keep their prose: see below)
    re.compile(r"`[^`\n]*`"),  # code spans and role targets
    re.compile(r"\]\([^)]*\)"),  # link targets
    re.compile(r"<[^>\n]*>"),  # HTML tags
    re.compile(r"https?://\S+"),
    re.compile(r"^\s*\([\w-]+\)=\s*$", re.M),  # MyST labels
    re.compile(r"^:[\w-]+:.*$", re.M),  # directive options
]
_MATH = re.compile(r"\$\$.*?\$\$|\$[^$\n]+\$", re.S)
_MYST_FENCE = re.compile(r"^(:::+|```+)\s*\{[\w-]+\}.*$", re.M)


@dataclass
class Finding:
    """A typed number that is neither generated nor a fact of the chapter's code."""

    notebook: str
    cell: int
    text: str
    context: str

    def __str__(self) -> str:
        return f"{self.notebook} cell {self.cell}: {self.text!r} in “…{self.context}…”"


@dataclass
class Report:
    """What :func:`check_notebook` counted: generated numbers, typed facts, and the refused ones."""

    generated: int = 0
    facts: int = 0
    refused: list[Finding] = field(default_factory=list)


def _value(match: re.Match) -> float:
    """The number a match denotes (``4×10⁴`` → 40000.0; ``12 %`` → 12.0)."""
    value = float(match.group("num").replace(",", ""))
    if match.group("exp"):
        power = re.sub(r"[^\-0-9]", "", match.group("exp").translate(_SUPERSCRIPT).split("10", 1)[1])
        value *= 10.0 ** int(power)
    return value


def code_facts(sources: list[str]) -> set[float]:
    """The numeric literals of the code cells ``sources`` (``1e-4``, ``60_000``, ``-0.5`` as written);
    IPython magics and lines that do not tokenize are skipped."""
    facts: set[float] = set()
    for src in sources:
        text = "\n".join(line for line in src.splitlines() if not line.lstrip().startswith(("%", "!")))
        try:
            tokens = list(tokenize.generate_tokens(io.StringIO(text).readline))
        except (tokenize.TokenError, IndentationError, SyntaxError):
            continue
        for tok in tokens:
            if tok.type == tokenize.NUMBER and not tok.string.endswith(("j", "J")):
                facts.add(float(ast.literal_eval(tok.string)))
    return facts


def _clean(text: str) -> str:
    """Markdown without what is not prose (code, links, tags, labels); math kept, directives' braces gone."""
    text = _MYST_FENCE.sub("", text)
    for pattern in _STRIP:
        text = pattern.sub(" ", text)
    return text


def _math_spans(text: str) -> list[tuple[int, int]]:
    return [m.span() for m in _MATH.finditer(text)]


def prose_numbers(text: str) -> list[tuple[float, str, str]]:
    """The checked numbers of Markdown ``text``: ``(value, as written, context)``; references, small integers and
    notation in math are left out."""
    text = _clean(text)
    refs = [m.span() for m in _REFERENCE.finditer(text)]
    math = _math_spans(text)
    found = []
    for m in _NUMBER.finditer(text):
        start, end = m.span()
        if any(a <= start and end <= b for a, b in refs):
            continue
        value = _value(m)
        in_math = any(a <= start < b for a, b in math)
        if in_math and "." not in m.group("num"):
            continue
        if not m.group("exp") and not m.group("pct") and "." not in m.group("num") and value <= 10:
            continue
        found.append((value, m.group(0).strip(), text[max(0, start - 40):end + 20].replace("\n", " ")))
    return found


def _is_fact(value: float, written: str, facts: set[float]) -> bool:
    candidates = {value, round(value, 12)}
    if written.endswith("%"):
        candidates.add(round(value / 100, 12))
    return any(abs(c - f) <= 1e-12 * max(1.0, abs(f)) for c in candidates for f in facts)


def _fstring_text(src: str) -> list[str]:
    """The literal text of the f-strings and strings of a code cell (what a generated sentence types)."""
    try:
        tree = ast.parse("\n".join(line for line in src.splitlines() if not line.lstrip().startswith(("%", "!"))))
    except SyntaxError:
        return []
    specs = {id(n.format_spec) for n in ast.walk(tree) if isinstance(n, ast.FormattedValue) and n.format_spec}
    parts = []
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr) and id(node) not in specs:  # not a format spec such as {x:<26}
            parts += [v.value for v in node.values if isinstance(v, ast.Constant) and isinstance(v.value, str)]
    return parts


def _markdown_outputs(cell: dict) -> list[str]:
    return ["".join(o["data"]["text/markdown"]) if isinstance(o["data"]["text/markdown"], list)
            else o["data"]["text/markdown"] for o in cell.get("outputs", []) if "text/markdown" in o.get("data", {})]


def check_notebook(path: str | Path) -> Report:
    """Check one notebook (``.ipynb``): every number of its Markdown cells, and of the literal text of the f-strings
    of cells that write Markdown, must be a fact of its code; numbers in Markdown outputs count as generated."""
    nb = json.loads(Path(path).read_text())
    cells = nb["cells"]
    src = ["".join(c["source"]) if isinstance(c["source"], list) else c["source"] for c in cells]
    facts = code_facts([s for c, s in zip(cells, src) if c["cell_type"] == "code"])
    report = Report()
    name = Path(path).name
    for i, (cell, text) in enumerate(zip(cells, src)):
        if cell["cell_type"] == "markdown":
            typed = [text]
        elif cell["cell_type"] == "code" and ("Markdown(" in text):
            typed = _fstring_text(text)
            report.generated += sum(len(prose_numbers(out)) for out in _markdown_outputs(cell))
        else:
            continue
        for part in typed:
            for value, written, context in prose_numbers(part):
                if _is_fact(value, written, facts):
                    report.facts += 1
                else:
                    report.refused.append(Finding(name, i, written, context))
    return report


def main(argv: list[str] | None = None) -> int:
    """Print each notebook's counts and refused numbers; 1 if any was refused."""
    paths = argv if argv else sorted(str(p) for p in (Path(__file__).resolve().parents[2] / "chapters")
                                     .glob("*.ipynb"))
    bad = 0
    for path in paths:
        report = check_notebook(path)
        print(f"{Path(path).name}: {report.generated} generated, {report.facts} typed facts, "
              f"{len(report.refused)} refused")
        for finding in report.refused:
            print(f"  {finding}")
        bad += len(report.refused)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
