"""The public entry points: load models and compile them for a target."""

from __future__ import annotations

import os
from typing import Any

from qir.errors import OptionError
from qir.ir.graph import Graph
from qir.runtime.model import CompiledModel
from qir.targets.base import CompileOptions, get_target


def load_onnx(model: Any) -> Graph:
    """Import an ONNX model (path, bytes or onnx.ModelProto) as a qir Graph."""
    from qir.frontends.onnx import load_onnx as _load

    return _load(model)


def load_torch(model: Any, example_inputs: Any = None, *, dynamic_shapes: Any = None) -> Graph:
    """Import a PyTorch ``nn.Module`` (with example inputs), an ExportedProgram or a ``.pt2``
    file through ``torch.export``."""
    from qir.frontends.torch import load_torch as _load

    return _load(model, example_inputs, dynamic_shapes=dynamic_shapes)


def load_tensorflow(model: Any, **options: Any) -> Graph:
    """Import a Keras model, a SavedModel directory, a ``.keras``/``.h5``/frozen ``.pb`` file or
    a ``tf.function``."""
    from qir.frontends.tensorflow import load_tensorflow as _load

    return _load(model, **options)


def load_tflite(model: Any) -> Graph:
    """Import a ``.tflite`` flatbuffer (path or bytes), float or integer-quantized."""
    from qir.frontends.tflite import load_tflite as _load

    return _load(model)


#: Model file suffixes → the loader that reads them (ONNX for anything else).
_LOADERS_BY_SUFFIX = {".pt2": load_torch, ".tflite": load_tflite, ".keras": load_tensorflow,
                      ".h5": load_tensorflow, ".pb": load_tensorflow}


def as_graph(model: Any, example_inputs: Any = None) -> Graph:
    """A Graph from a Graph; an ONNX path/bytes/ModelProto; a qir .qir/.qirb file; a .pt2,
    .tflite, .keras/.h5/.pb file or a SavedModel directory; a torch module (with
    ``example_inputs``) or ExportedProgram; a Keras model or tf.function."""
    if isinstance(model, Graph):
        return model
    if isinstance(model, (str, os.PathLike)):
        path = str(model)
        if path.endswith((".qir", ".qirb")):
            from qir.ir import serialize

            return serialize.load(model)
        if os.path.isdir(path) and os.path.exists(os.path.join(path, "saved_model.pb")):
            return load_tensorflow(path)
        loader = _LOADERS_BY_SUFFIX.get(os.path.splitext(path)[1])
        if loader is not None:
            return loader(path)
        return load_onnx(model)
    module = type(model).__module__.split(".")[0]
    if module == "torch":
        return load_torch(model, example_inputs)
    if module in ("keras", "tensorflow", "tf_keras"):
        return load_tensorflow(model)
    return load_onnx(model)


def compile(model: Any, target: str = "reference", *, num_threads: int = 1, opt_level: int = 3,
            passes: Any = None, quantize: Any = None, calibration: Any = None,
            example_inputs: Any = None, progress: bool = False, **options: Any) -> CompiledModel:
    """Compile ``model`` for ``target`` and return a runnable CompiledModel.

    The graph is optimized with the standard pipeline of ``opt_level`` (0..3), or with
    ``passes`` (a pipeline string or list) when given; the caller's Graph is left untouched.
    ``model`` is anything ``as_graph`` reads (``example_inputs`` go with a torch module).
    ``quantize`` (``"int8"``, ``"a16w8"``, ``"fp16"``, ``"mixed"`` or a ``qir.quant.Config``)
    quantizes the optimized graph over ``calibration`` (feed dicts, .npy/.npz files, a folder or
    a QNN input list); the compiled model still takes and returns float.
    """
    if options:
        raise OptionError(f"unknown compile option(s): {', '.join(sorted(options))}")
    if opt_level not in (0, 1, 2, 3):
        raise OptionError(f"opt_level must be 0, 1, 2 or 3, got {opt_level!r}")
    opts = CompileOptions(num_threads=num_threads)
    graph = as_graph(model, example_inputs)
    if passes is not None or opt_level > 0:
        from qir.passes import PassContext, run as run_passes

        if graph is model:  # never edit the caller's graph
            graph = graph.copy()
        graph = run_passes(graph, passes, ctx=PassContext(opt_level=opt_level))
    if quantize is not None:
        from qir.passes.quantize import Config, quantize as quantize_graph

        graph = quantize_graph(graph, Config.of(quantize), calibration, progress=progress).graph
    elif calibration is not None:
        raise OptionError("calibration= is only used with quantize=...",
                          hint='e.g. qir.compile(model, quantize="int8", calibration=feeds)')
    tgt = get_target(target)
    blob = tgt.compile(graph, opts)
    return CompiledModel(graph, target, blob, tgt.load(blob, opts), opts)


def load(path: str | os.PathLike, *, num_threads: int | None = None) -> CompiledModel:
    """A CompiledModel from an artifact folder written by ``CompiledModel.save`` or ``qirc compile``.

    Its magic, versions and checksums are checked (a ModelLoadError names the file at fault);
    ``num_threads`` overrides the thread count it was compiled with.
    """
    from qir.runtime.artifacts import load_artifact

    return load_artifact(path, num_threads=num_threads)
