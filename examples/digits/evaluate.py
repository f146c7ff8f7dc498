"""Accuracy of the digits model on its held-out split, computed through qir.

    python examples/digits/evaluate.py                       # the bundled digits.onnx
    python examples/digits/evaluate.py --model out/digits.qir --target reference

Any model form qir reads works (.onnx, .qir, .qirb); the split is digits_test.npz next to this file.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

import qir

HERE = Path(__file__).resolve().parent


def evaluate(model: Path, data: Path, target: str = "reference", num_threads: int = 1) -> float:
    """Top-1 accuracy of ``model`` on the split in ``data`` (x float32 [N,1,8,8], y int64 [N])."""
    split = np.load(data)
    compiled = qir.compile(str(model), target=target, num_threads=num_threads)
    start = time.perf_counter()
    logits = compiled.run({"input": split["x"]})["logits"]
    seconds = time.perf_counter() - start
    accuracy = float((logits.argmax(axis=1) == split["y"]).mean())
    print(f"{model.name} on {target}: accuracy {accuracy:.4f} "
          f"({int(round(accuracy * len(split['y'])))}/{len(split['y'])} held-out digits, "
          f"{seconds * 1000:.1f} ms for the batch)")
    return accuracy


def main() -> None:
    parser = argparse.ArgumentParser(description="Digits accuracy through qir.")
    parser.add_argument("--model", type=Path, default=HERE / "digits.onnx")
    parser.add_argument("--data", type=Path, default=HERE / "digits_test.npz")
    parser.add_argument("--target", default="reference")
    parser.add_argument("--num-threads", type=int, default=1)
    parser.add_argument("--min-accuracy", type=float, default=0.0,
                        help="exit non-zero below this accuracy (used by make demo)")
    args = parser.parse_args()
    accuracy = evaluate(args.model, args.data, args.target, args.num_threads)
    if accuracy < args.min_accuracy:
        raise SystemExit(f"accuracy {accuracy:.4f} is below {args.min_accuracy}")


if __name__ == "__main__":
    main()
