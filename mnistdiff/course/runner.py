"""Run the whole course: execute the seven notebooks in order, store their outputs, time each.

``python -m mnistdiff course --profile full`` on a GPU machine produces the executed chapters the
book shows (``book/chapters/``); ``--inplace`` refreshes the stored outputs in ``notebooks/`` that
nbval compares against. Times go to ``results/<profile>/course_times.json``.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

from mnistdiff.course.chapters import CHAPTERS, chapter_name
from mnistdiff.course.profiles import ENV_VAR, profile_name
from mnistdiff.devices import device_name
from mnistdiff.evaluation.report import results_dir
from mnistdiff.files import atomic_write_text, repo_root

__all__ = ["run_course", "notebook_path"]

REPO_ROOT = repo_root()
NOTEBOOK_DIR = REPO_ROOT / "notebooks"


def notebook_path(name: str) -> Path:
    """``"2"``, ``"02"`` or ``"02_ddpm"`` → ``notebooks/02_ddpm.ipynb``."""
    return NOTEBOOK_DIR / f"{chapter_name(name)}.ipynb"


def run_course(
    profile: str | None = None,
    notebooks: list[str] | None = None,
    output_dir: str | Path | None = None,
    inplace: bool = False,
    timeout: int = 3600,
) -> dict[str, float]:
    """Execute notebooks top to bottom in fresh kernels; returns seconds per notebook."""
    import nbformat

    prof = profile_name(profile)
    os.environ[ENV_VAR] = prof  # the kernels inherit it
    out_dir = NOTEBOOK_DIR if inplace else Path(output_dir or REPO_ROOT / "book" / "chapters")
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [notebook_path(n) for n in notebooks] if notebooks else [NOTEBOOK_DIR / f"{n}.ipynb" for n in CHAPTERS]
    times: dict[str, float] = {}
    started = time.strftime("%Y-%m-%dT%H:%M:%S")
    results = results_dir() / prof / "course_times.json"
    previous = json.loads(results.read_text()) if results.exists() else None
    print(f"running {len(paths)} notebooks, profile {prof}, on {device_name()}")
    with tempfile.TemporaryDirectory(prefix="mnistdiff-kernel-") as sockets:
        for path in paths:
            nb = nbformat.read(path, as_version=4)
            t0 = time.perf_counter()
            client = _client(nb, timeout, Path(sockets) / path.stem)
            try:
                client.execute()
            finally:  # the client does not own the kernel it was given: shut it down here
                if client.km is not None and client.km.has_kernel:
                    client.km.shutdown_kernel(now=True)
            times[path.stem] = round(time.perf_counter() - t0, 1)
            atomic_write_text(out_dir / path.name, nbformat.writes(nb) + "\n")
            print(f"  {path.stem:<22} {times[path.stem]:8.1f} s  → {out_dir / path.name}")
            # after each chapter, so a run stopped half-way keeps the times of those it finished; a finished run of
            # every chapter replaces the record, any other keeps the other chapters' entries
            whole = not notebooks and len(times) == len(paths)
            _record_times(results, prof, times, started, None if whole else previous)
    print(f"  {'total':<22} {sum(times.values()):8.1f} s")
    return times


def _record_times(path: Path, prof: str, times: dict[str, float], started: str, previous: dict | None) -> None:
    """Write ``course_times.json``: this run's ``times``, over the ``previous`` record when given."""
    record = {"profile": prof, "device": device_name(), "notebooks": dict(times),
              "total_seconds": round(sum(times.values()), 1), "total_of": "one run",
              "executed": {name: started for name in times}}
    if previous is not None:
        record = _merged(previous, record)
    atomic_write_text(path, json.dumps(record, indent=2) + "\n")


def _client(nb: object, timeout: int, sockets: Path) -> object:
    """A notebook client whose kernel talks over local IPC sockets named ``sockets-<n>``: no TCP port, so the kernel
    has no "running over TCP without encryption" warning to print (a warning the reader could not act on)."""
    from jupyter_client.manager import KernelManager
    from nbclient import NotebookClient

    km = KernelManager(kernel_name="python3", transport="ipc", ip=str(sockets))
    return NotebookClient(nb, km=km, timeout=timeout, kernel_name="python3",
                          resources={"metadata": {"path": str(NOTEBOOK_DIR)}})


def _merged(previous: dict, record: dict) -> dict:
    """``record`` (some chapters) over ``previous``; where the chapters ran on different CPUs, ``devices`` names each
    chapter's and ``device`` lists them all (the book's table shows it)."""
    merged = {**previous, **record, "notebooks": {**previous.get("notebooks", {}), **record["notebooks"]},
              "executed": {**previous.get("executed", {}), **record["executed"]}}
    devices = {**{n: previous.get("device") for n in previous.get("notebooks", {})}, **previous.get("devices", {}),
               **{n: record["device"] for n in record["notebooks"]}}
    if len(set(devices.values())) > 1:
        merged["devices"] = dict(sorted(devices.items()))
        merged["device"] = "; ".join(f"{d} ({', '.join(sorted(n[:2] for n in devices if devices[n] == d))})"
                                     for d in dict.fromkeys(devices.values()))
    merged["total_seconds"] = round(sum(merged["notebooks"].values()), 1)
    runs = {merged["executed"].get(n) for n in merged["notebooks"]}
    merged["total_of"] = "one run" if len(runs) == 1 and None not in runs else f"a sum of {len(runs)} runs"
    return merged
