"""The TensorFlow frontend: Keras models, SavedModels, frozen GraphDefs and tf.functions → Graph.

TensorFlow is imported lazily (qir imports without it); see loader.py for the model kinds,
importer.py for the conversion and ops_*.py for the op converters (registry.py).
"""

from __future__ import annotations

from typing import Any

from qir.ir.graph import Graph


def load_tensorflow(model: Any, *, input_shapes=None, signature: str = "serving_default",
                    outputs: list[str] | None = None) -> Graph:
    """Import a TensorFlow model as a verified qir Graph.

    ``model`` is a Keras model, a ``.keras``/``.h5`` file, a SavedModel directory (its
    ``signature`` is imported), a frozen GraphDef (``.pb`` file or ``tf.compat.v1.GraphDef``), a
    ``tf.function`` or a concrete function. Variables are frozen into constants; NHWC convolutions
    and pooling become qir's NCHW ops between layout transposes (``cancel-transposes`` removes
    the pairs between layers).

    ``input_shapes`` fixes unknown input dims (e.g. the batch): a dict ``{input name: shape}``, a
    list of shapes in input order, or one shape for a single input; dims still unknown become
    symbols (``N`` for the batch). A tf.function without an input_signature is traced with
    float32 inputs of these shapes. ``outputs`` names the output tensors of a GraphDef (default:
    the tensors no op reads).

    Inputs keep the signature's names (placeholder names, Keras input names), outputs its output
    keys (Keras output names; ``output_<i>`` for plain functions). All unsupported ops are
    reported in one UnsupportedOpError, data-dependent control flow (tf.cond, tf.while_loop)
    included.
    """
    from qir.frontends.tensorflow.importer import Importer
    from qir.frontends.tensorflow.loader import build_graph, import_tf, read_model
    from qir.ir.verifier import verify

    tf = import_tf()
    source = read_model(tf, model, input_shapes, signature, outputs)
    tf_graph, inputs, outs = build_graph(tf, source, input_shapes)
    graph = Importer(tf_graph, inputs, outs, source.where, name=source.name or "main").run()
    verify(graph)
    return graph


__all__ = ["load_tensorflow"]
