"""The TFLite frontend: ``.tflite`` flatbuffers (float, int8/uint8/int16 quantized) in, a
verified qir Graph out, quantized tensors carrying their QuantParams (QDQ form)."""

from __future__ import annotations

import os
from typing import Union

from qir.ir.graph import Graph

__all__ = ["load_tflite"]


def load_tflite(model: Union[str, os.PathLike, bytes]) -> Graph:
    """Import subgraph 0 of a TFLite model (a ``.tflite`` path or its bytes) as a qir Graph.

    Inputs and outputs keep their TFLite tensor names; a -1 in a shape signature becomes a
    symbolic dim (``N`` for the batch). Conv/pool ops get NHWC↔NCHW transposes around them and
    their weights are transposed at import. Quantized tensors keep their scales and zero
    points as QuantParams on their types, and quantized operators come in as
    DequantizeLinear → float op → QuantizeLinear. Raises ModelLoadError for a truncated or
    corrupt file and one UnsupportedOpError listing every unsupported or custom operator.
    The file is parsed with the ``tflite`` flatbuffer bindings; TensorFlow is not needed.
    """
    from qir.frontends.tflite.importer import Importer
    from qir.frontends.tflite.reader import read_tflite
    from qir.ir.verifier import verify

    graph = Importer(read_tflite(model)).run()
    verify(graph)
    return graph
