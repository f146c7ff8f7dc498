"""An example qir plugin: one pass, registered through the ``qir.passes`` entry point."""

from qir_plugin_example.swap_relu_maxpool import SwapReluMaxPool

__all__ = ["SwapReluMaxPool"]
