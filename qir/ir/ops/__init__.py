"""The built-in op families; importing this package registers every op.

One file per family: elementwise (math, comparison, logic, cast, strings), nn (activations,
convolution, pooling, normalization, recurrent, attention), tensor (shape and data movement),
reduce, linalg (matmul, gemm, einsum, signal), control (If/Loop/Scan, sequences, optionals),
quant, loss, training (optimizer updates), misc (NMS, TF-IDF, ai.onnx.ml), fused (compound ops
that passes create, each with a decomposition), qint (integer-only quantized compute).
"""

from qir.ir.ops import (  # noqa: F401  (each module registers its ops)
    control, elementwise, linalg, loss, misc, nn, quant, reduce, tensor, training,
)
from qir.ir.ops import fused, qint  # noqa: F401,E402  (last: they reuse the schemas of nn.conv...)
