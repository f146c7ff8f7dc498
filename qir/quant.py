"""Public quantization API (``qir.quant.Config`` etc.), from qir.passes.quantize."""

from qir.passes.quantize import *  # noqa: F401,F403
from qir.passes.quantize import __all__  # noqa: F401
