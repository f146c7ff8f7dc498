"""Train the bundled demo model: a small CNN on scikit-learn's 8×8 handwritten digits.

Writes, next to this file:
  digits.onnx       the trained model (opset 17; input "input" f32[N,1,8,8], output "logits" f32[N,10])
  digits_test.npz   the held-out split: x float32 [N,1,8,8] (pixels scaled to [0, 1]), y int64 [N]

Run it with PyTorch installed (``pip install torch``); qir itself never needs torch to use the
result. Training is deterministic (fixed seeds, one thread), takes a few seconds on a CPU and
reaches about 98% accuracy on the held-out split.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

HERE = Path(__file__).resolve().parent
SEED = 0


class DigitsCNN(nn.Module):
    """Conv-ReLU-MaxPool twice, then two fully connected layers (only Conv/Relu/MaxPool/Flatten/Gemm)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),   # 16×4×4
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 32×2×2
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(32 * 2 * 2, 64), nn.ReLU(), nn.Linear(64, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def load_split(test_size: float = 0.2) -> tuple[np.ndarray, ...]:
    """Digits as float32 [N,1,8,8] in [0, 1] and int64 labels, split stratified with a fixed seed."""
    digits = load_digits()
    x = (digits.images.astype(np.float32) / 16.0)[:, None, :, :]
    y = digits.target.astype(np.int64)
    return train_test_split(x, y, test_size=test_size, random_state=SEED, stratify=y)


def train(model: nn.Module, x: np.ndarray, y: np.ndarray, epochs: int) -> None:
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3, weight_decay=1e-4)
    loss_fn = nn.CrossEntropyLoss()
    gen = torch.Generator().manual_seed(SEED)
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(len(xt), generator=gen)
        total = 0.0
        for start in range(0, len(xt), 64):
            idx = order[start:start + 64]
            opt.zero_grad()
            loss = loss_fn(model(xt[idx]), yt[idx])
            loss.backward()
            opt.step()
            total += float(loss) * len(idx)
        if (epoch + 1) % 10 == 0:
            print(f"epoch {epoch + 1:3d}  loss {total / len(xt):.4f}")


def accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    model.eval()
    with torch.no_grad():
        pred = model(torch.from_numpy(x)).argmax(1).numpy()
    return float((pred == y).mean())


def export(model: nn.Module, path: Path) -> None:
    """ONNX export with the TorchScript exporter (the dynamo one needs onnxscript)."""
    model.eval()
    torch.onnx.export(
        model, (torch.zeros(1, 1, 8, 8),), str(path), dynamo=False, opset_version=17,
        input_names=["input"], output_names=["logits"],
        dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--out-dir", type=Path, default=HERE)
    args = parser.parse_args()

    torch.manual_seed(SEED)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    x_train, x_test, y_train, y_test = load_split()
    model = DigitsCNN()
    train(model, x_train, y_train, args.epochs)
    print(f"train accuracy {accuracy(model, x_train, y_train):.4f}  "
          f"test accuracy {accuracy(model, x_test, y_test):.4f} ({len(y_test)} held-out images)")

    args.out_dir.mkdir(parents=True, exist_ok=True)
    export(model, args.out_dir / "digits.onnx")
    np.savez_compressed(args.out_dir / "digits_test.npz", x=x_test, y=y_test)
    print(f"wrote {args.out_dir / 'digits.onnx'} and {args.out_dir / 'digits_test.npz'}")


if __name__ == "__main__":
    main()
