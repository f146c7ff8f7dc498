"""The ATen converters, one module per op family (imported explicitly: no silent skip)."""

from qir.frontends.torch.ops import elementwise, linalg, nn, reduce, tensor  # noqa: F401
