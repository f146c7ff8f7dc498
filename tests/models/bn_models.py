"""Small real models whose BatchNorm nodes are still in the exported ONNX graph.

Built with PyTorch (random init, fixed seed, BatchNorm running statistics and affine
parameters randomized so folding them is not a no-op), put in eval mode and exported with
``training=TrainingMode.PRESERVE`` and ``do_constant_folding=False``, which keeps every
BatchNormalization (eval mode: ``training_mode=0``, running statistics) instead of folding it
into the convolutions as a plain eval-mode export does.

- ``resnet18``: ResNet-18 topology (BasicBlocks [2, 2, 2, 2], 1x1 conv+BN downsampling,
  residual adds, ReLU), CIFAR-style stem for a 1x3x32x32 input.
- ``mobilenetv2``: MobileNetV2 topology (inverted residuals: 1x1 expand, 3x3 depthwise,
  1x1 linear projection, ReLU6 = Clip, residual adds when stride 1), width 0.5, 1x3x32x32.
- ``transformer``: one pre-LN transformer encoder block on 1x16x64 (multi-head attention
  spelled out as MatMul/Softmax, LayerNorm, GELU MLP, residual adds).

``torch`` is imported here at module level: import this module only after
``pytest.importorskip("torch")``.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

SEED = 0
OPSET = 17


def _randomize_bn(model: nn.Module, seed: int) -> None:
    """Give every BatchNorm non-trivial running statistics and affine parameters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.running_mean.copy_(torch.randn(c, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(c, generator=g) * 1.5 + 0.5)
                m.weight.copy_(torch.rand(c, generator=g) + 0.5)
                m.bias.copy_(torch.randn(c, generator=g) * 0.2)


# -- ResNet-18 ---------------------------------------------------------------------------------

class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return self.relu(y + (x if self.down is None else self.down(x)))


class ResNet18(nn.Module):
    def __init__(self, width: int = 64, classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        layers, cin = [], width
        for i, n in enumerate([2, 2, 2, 2]):
            cout = width * 2 ** i
            for j in range(n):
                layers.append(BasicBlock(cin, cout, 2 if (j == 0 and i > 0) else 1))
                cin = cout
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, classes)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.layers(self.stem(x))), 1))


# -- MobileNetV2 --------------------------------------------------------------------------------

class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        hidden = cin * expand
        layers = []
        if expand != 1:
            layers += [nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6()]
        layers += [nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False), nn.BatchNorm2d(hidden),
                   nn.ReLU6(), nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.conv = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        y = self.conv(x)
        return x + y if self.residual else y


def _make_divisible(v: float, divisor: int = 8) -> int:
    return max(divisor, int(v + divisor / 2) // divisor * divisor)


class MobileNetV2(nn.Module):
    #: (expansion t, channels c, repeats n, stride s), the paper's table.
    SETTINGS = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                (6, 160, 3, 2), (6, 320, 1, 1)]

    def __init__(self, width: float = 0.5, classes: int = 10):
        super().__init__()
        cin = _make_divisible(32 * width)
        last = _make_divisible(1280 * max(1.0, width))
        layers = [nn.Conv2d(3, cin, 3, 1, 1, bias=False), nn.BatchNorm2d(cin), nn.ReLU6()]  # stride 1 at 32x32
        for t, c, n, s in self.SETTINGS:
            cout = _make_divisible(c * width)
            for i in range(n):
                layers.append(InvertedResidual(cin, cout, s if i == 0 else 1, t))
                cin = cout
        layers += [nn.Conv2d(cin, last, 1, bias=False), nn.BatchNorm2d(last), nn.ReLU6()]
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(last, classes))

    def forward(self, x):
        x = nn.functional.adaptive_avg_pool2d(self.features(x), 1)
        return self.classifier(torch.flatten(x, 1))


# -- transformer block --------------------------------------------------------------------------

class EncoderBlock(nn.Module):
    """Pre-LN encoder block: x + Attn(LN(x)); x + MLP(LN(x)) with GELU."""

    def __init__(self, d: int = 64, heads: int = 4, mlp: int = 4):
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.ln2 = nn.LayerNorm(d)
        self.fc1 = nn.Linear(d, mlp * d)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(mlp * d, d)
        self.drop = nn.Dropout(0.1)

    def forward(self, x):
        b, n, d = x.shape
        h = self.heads
        q, k, v = self.qkv(self.ln1(x)).reshape(b, n, 3, h, d // h).permute(2, 0, 3, 1, 4)
        att = torch.softmax(q @ k.transpose(-2, -1) * (d // h) ** -0.5, dim=-1)
        y = (self.drop(att) @ v).transpose(1, 2).reshape(b, n, d)
        x = x + self.drop(self.proj(y))
        return x + self.drop(self.fc2(self.act(self.fc1(self.ln2(x)))))


# -- building and exporting -------------------------------------------------------------------------

def _with_stats(model: nn.Module) -> nn.Module:
    torch.manual_seed(SEED)
    _randomize_bn(model, SEED + 1)
    return model.eval()


def resnet18() -> tuple[nn.Module, tuple[int, ...]]:
    torch.manual_seed(SEED)
    return _with_stats(ResNet18()), (1, 3, 32, 32)


def mobilenetv2() -> tuple[nn.Module, tuple[int, ...]]:
    torch.manual_seed(SEED)
    return _with_stats(MobileNetV2()), (1, 3, 32, 32)


def transformer() -> tuple[nn.Module, tuple[int, ...]]:
    torch.manual_seed(SEED)
    return EncoderBlock().eval(), (1, 16, 64)


#: name → builder returning (eval-mode module, input shape)
MODELS: dict[str, Callable[[], tuple[nn.Module, tuple[int, ...]]]] = {
    "resnet18": resnet18, "mobilenetv2": mobilenetv2, "transformer": transformer}


def example_input(shape: tuple[int, ...], seed: int = SEED) -> np.ndarray:
    return np.random.RandomState(seed).standard_normal(shape).astype(np.float32)


def export(name: str, path: str | Path) -> tuple[Path, dict[str, np.ndarray]]:
    """Export model ``name`` to ``path`` (BatchNorm kept); return the path and a feed dict."""
    model, shape = MODELS[name]()
    x = example_input(shape)
    path = Path(path)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings about shapes that are constant here anyway
        torch.onnx.export(model, (torch.from_numpy(x),), str(path), input_names=["input"],
                          output_names=["output"], opset_version=OPSET,
                          training=torch.onnx.TrainingMode.PRESERVE, do_constant_folding=False,
                          dynamo=False)
    return path, {"input": x}
