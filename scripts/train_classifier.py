"""Train a feature network behind the sample-quality metrics, reproducibly.

    python scripts/train_classifier.py                   # the project's classifier → mnistdiff/assets/classifier.pt
    python scripts/train_classifier.py --space resnet    # the second, independent one → mnistdiff/assets/resnet.pt

Each space's recipe (architecture, seed, epochs) is ``SPACE_RECIPES`` in
``mnistdiff/evaluation/classifier.py``; the options below override it. Seeded and deterministic on
CPU (same torch version and thread count → bit-identical weights); each takes minutes on two CPU
cores (the sidecar JSON records how many seconds). The committed weights were made with the defaults.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mnistdiff.evaluation.classifier import FEATURE_SPACES, SPACE_RECIPES  # noqa: E402
from mnistdiff.evaluation.classifier_training import train_classifier  # noqa: E402

MIN_ACCURACY = 0.993


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--space", choices=sorted(FEATURE_SPACES), default="classifier", help="which feature network")
    p.add_argument("--epochs", type=int, default=None, help="default: the space's recipe")
    p.add_argument("--batch_size", type=int, default=128)
    p.add_argument("--max_lr", type=float, default=4e-3)
    p.add_argument("--weight_decay", type=float, default=1e-4)
    p.add_argument("--seed", type=int, default=None, help="default: the space's recipe")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: the recipe's, else 2; fix it for bit-reproducibility)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--data_dir", default=None, help="another MNIST copy (default: the shipped one)")
    p.add_argument("--out", default=None, help="weights path (default: the space's); the JSON sidecar goes next to it")
    args = p.parse_args(argv)
    recipe = dict(SPACE_RECIPES[args.space])
    recipe.update({k: v for k, v in (("epochs", args.epochs), ("seed", args.seed), ("num_threads", args.threads))
                   if v is not None})
    recipe.setdefault("num_threads", 2)
    out = args.out or str(FEATURE_SPACES[args.space])
    _, meta = train_classifier(
        **recipe, batch_size=args.batch_size, max_lr=args.max_lr, weight_decay=args.weight_decay,
        out_path=out, data_dir=args.data_dir, device=args.device,
    )
    print(f"test accuracy {meta['test_accuracy']:.4%}, {meta['size_bytes'] / 1e6:.2f} MB, "
          f"{meta['seconds']:.0f} s → {out}")
    if meta["test_accuracy"] < MIN_ACCURACY:
        print(f"WARNING: test accuracy below the required {MIN_ACCURACY:.1%}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
