"""The core runs without the course extra (ipywidgets, umap-learn, scikit-learn); what needs it says
how to install it."""

from __future__ import annotations

import subprocess
import sys
import textwrap

BLOCK = textwrap.dedent("""
    import importlib.abc, sys
    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("ipywidgets", "umap", "sklearn"):
                raise ImportError(f"No module named {name!r} (blocked by the test)")
            return None
    sys.meta_path.insert(0, Block())
""")


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCK + textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=300)


def test_core_training_evaluation_and_cli_import_without_the_course_extra():
    res = _run("""
        import mnistdiff, mnistdiff.cli, mnistdiff.training.pipelines, mnistdiff.evaluation.metrics
        import mnistdiff.evaluation.report, mnistdiff.evaluation.umap_eval, mnistdiff.course.pretrained
        from mnistdiff import UNet, NoiseSchedule, q_sample, ddim_sample_loop, get_ddpm
        print("ok", "ipywidgets" in sys.modules, "umap" in sys.modules)
    """)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["ok", "False", "False"]


def test_widgets_without_ipywidgets_say_which_extra_to_install():
    res = _run("import mnistdiff.course.widgets")
    assert res.returncode != 0
    assert 'needs ipywidgets, which is not installed: pip install "mnistdiff[course]"' in res.stderr


def test_umap_without_umap_learn_says_which_extra_to_install():
    res = _run("""
        import numpy as np
        from mnistdiff.evaluation.umap_eval import fit_umap, knn_two_sample_accuracy
        for call in (lambda: fit_umap(np.zeros((20, 1, 28, 28), np.uint8)),
                     lambda: knn_two_sample_accuracy(np.zeros((5, 2)), np.ones((5, 2)))):
            try:
                call()
            except ImportError as err:
                print(err)
    """)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.strip().splitlines()
    assert lines == ['the UMAP evaluation needs umap-learn, which is not installed: pip install "mnistdiff[course]" '
                     '(or pip install umap-learn)',
                     'the k-NN two-sample test needs scikit-learn, which is not installed: pip install '
                     '"mnistdiff[course]" (or pip install scikit-learn)']
