"""How much of the package one command crosses, and how the package is laid out (issue 20's figures).

Runs a command of ``python -m mnistdiff`` in this process under :func:`sys.setprofile` and counts the
package's files and functions that it enters (comprehensions, lambdas and generator expressions are
not counted as functions). Then counts the package's lines by layer and the places that name each
model kind. Prints one JSON document; ``--out`` also writes it.

    python benchmarks/code_paths.py --out results/code_paths.json

The commands run on tiny models trained here first (smoke-sized), so the figures describe the code
path, not the model. Nothing here is timed.
"""

from __future__ import annotations

import argparse
import ast
import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "mnistdiff"
KINDS = ("ddpm", "vae", "ldm", "cldm")
SKIPPED = {"<lambda>", "<listcomp>", "<dictcomp>", "<setcomp>", "<genexpr>", "<module>"}


def crossed(argv: list[str]) -> dict[str, object]:
    """Run ``python -m mnistdiff *argv`` here; the package files and functions it entered."""
    from mnistdiff.cli import main

    seen: set[tuple[str, str]] = set()

    def profile(frame, event, arg):  # noqa: ANN001 - sys.setprofile's signature
        if event == "call":
            path = frame.f_code.co_filename
            if path.startswith(str(PACKAGE)) and frame.f_code.co_name not in SKIPPED:
                seen.add((str(Path(path).relative_to(REPO)), frame.f_code.co_qualname))

    sys.setprofile(profile)
    try:
        rc = main(argv)
    finally:
        sys.setprofile(None)
    files = sorted({f for f, _ in seen})
    return {"argv": argv, "exit_code": rc, "files": len(files), "functions": len(seen), "file_list": files}


def layer(path: Path) -> str:
    parts = path.relative_to(PACKAGE).parts
    if len(parts) > 1:
        return parts[0]
    entry = {"cli.py", "cli_options.py", "cli_checks.py", "__main__.py", "book.py", "__init__.py"}
    return "entry points" if parts[0] in entry else "core"


def lines_by_layer() -> dict[str, int]:
    counts: dict[str, int] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        counts[layer(path)] = counts.get(layer(path), 0) + len(path.read_text().splitlines())
    counts["total"] = sum(counts.values())
    return counts


def kind_places() -> dict[str, list[str]]:
    """For each kind, the package's modules whose code (not docstrings or comments) holds its name as a string
    literal, and the line. (``"ddpm"`` is also the name of DDPM's ancestral *sampler*; those lines are listed too,
    so that a reader can tell them apart.)"""
    places: dict[str, list[str]] = {k: [] for k in KINDS}
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text())
        docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                      if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef))
                      and node.body and isinstance(node.body[0], ast.Expr)
                      and isinstance(node.body[0].value, ast.Constant)}
        for n in ast.walk(tree):
            if isinstance(n, ast.Constant) and n.value in KINDS and id(n) not in docstrings:
                places[str(n.value)].append(f"{path.relative_to(REPO)}:{n.lineno}")
    return places


def train_tiny(root: Path) -> dict[str, Path]:
    """A tiny VAE and LDM (smoke sizes, one epoch, 256 images) to sample from; their checkpoint paths."""
    common = ["--profile", "smoke", "--epochs", "1", "--subset", "256", "--quiet", "--out", str(root)]
    paths = {}
    for kind in ("vae", "ldm"):
        extra = [str(paths["vae"])] if kind == "ldm" else []
        subprocess.run([sys.executable, "-m", "mnistdiff", "train", kind, *extra, *common], check=True, cwd=REPO,
                       capture_output=True)
        run = sorted(root.glob(f"*-{kind}"))[-1] / "checkpoints"
        paths[kind] = next(p for p in sorted(run.iterdir()) if p.stem == "model" and p.suffix != ".json")
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        ckpt = train_tiny(root)
        sample = crossed(["sample", "ldm", str(ckpt["vae"]), str(ckpt["ldm"]), "--num_samples", "4",
                          "--ddim_steps", "5", "--individual", "1", "--out", str(root / "samples")])
        train = crossed(["train", "ddpm", "--profile", "smoke", "--epochs", "1", "--subset", "64", "--quiet",
                         "--out", str(root / "runs")])
    places = kind_places()
    doc = {"sample ldm": sample, "train ddpm": train, "lines": lines_by_layer(), "kind_places": places,
           "kind_modules": {k: len({p.split(":")[0] for p in v}) for k, v in places.items()}}
    text = json.dumps(doc, indent=2)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
