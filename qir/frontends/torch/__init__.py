"""PyTorch frontend: an ``nn.Module`` (through ``torch.export``), an ExportedProgram or a
``.pt2`` file in, a verified qir Graph out. torch is imported lazily, on first use."""

from qir.frontends.torch.importer import load_torch

__all__ = ["load_torch"]
