"""Every TensorFlow model kind → one frozen, shape-inferred ``tf.Graph`` and its signature.

Keras models, ``.keras``/``.h5`` files, SavedModel directories (through a signature), ``tf.function``s
and their concrete functions are traced to a concrete function, frozen with
``convert_variables_to_constants_v2`` (variables become Const ops; control flow is kept as
While/If ops, which the importer then reports) and taken as a GraphDef; a frozen GraphDef
(``.pb`` file or proto) is used as it is. The GraphDef is imported into a fresh ``tf.Graph``
with the placeholders' shapes set from ``input_shapes``, so that TF's own shape inference gives
every tensor its static shape (SAME padding, reshapes and slices need them).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import attrs

from qir.errors import ModelLoadError, OptionError, QirError


@attrs.define
class Source:
    """A frozen GraphDef and its signature: (qir name, placeholder op name) inputs and
    (qir name, tensor name) outputs."""

    graph_def: Any
    inputs: list[tuple[str, str]]
    outputs: list[tuple[str, str]]
    where: str
    name: str = "main"


def import_tf():
    """The ``tensorflow`` module, quietly; a QirError saying what to install when it is missing."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        import tensorflow as tf
    except ImportError as exc:
        raise QirError(f"the TensorFlow frontend needs TensorFlow, which cannot be imported ({exc})",
                       hint="pip install qir[tf]") from None
    return tf


# -- model kinds ---------------------------------------------------------------------------

def read_model(tf, model: Any, input_shapes, signature: str, outputs) -> Source:
    """A Source for any supported model kind."""
    if isinstance(model, (str, os.PathLike)):
        return _read_path(tf, Path(model), input_shapes, signature, outputs)
    if isinstance(model, tf.compat.v1.GraphDef):
        return _graph_def_source(model, "GraphDef", outputs)
    if isinstance(model, tf.keras.Model):
        return _keras_source(tf, model, input_shapes)
    if isinstance(model, tf.types.experimental.ConcreteFunction):
        name = str(getattr(model, "name", "main"))
        return _function_source(tf, model, f"concrete function {name!r}", name)
    if isinstance(model, tf.types.experimental.PolymorphicFunction):
        name = str(getattr(model, "__name__", "main"))
        return _function_source(tf, _trace(tf, model, input_shapes), f"tf.function {name!r}", name)
    if hasattr(model, "signatures"):  # a loaded SavedModel object
        return _signature_source(tf, model, signature, "SavedModel object")
    raise ModelLoadError(f"cannot load a {type(model).__name__} as a TensorFlow model",
                         hint="pass a Keras model, a SavedModel directory, a .keras/.h5 file, a frozen "
                              ".pb GraphDef, a tf.function or a concrete function")


def _read_path(tf, path: Path, input_shapes, signature: str, outputs) -> Source:
    if not path.exists():
        raise ModelLoadError(f"{path}: no such file or directory")
    if path.is_dir() or (path.name == "saved_model.pb" and (path.parent / "variables").is_dir()):
        folder = path if path.is_dir() else path.parent
        if not (folder / "saved_model.pb").is_file() and not (folder / "saved_model.pbtxt").is_file():
            raise ModelLoadError(f"{folder}: not a SavedModel directory (it has no saved_model.pb)")
        try:
            loaded = tf.saved_model.load(str(folder))
        except Exception as exc:
            raise ModelLoadError(f"{folder}: the SavedModel cannot be loaded: {type(exc).__name__}: "
                                 f"{str(exc).splitlines()[0] if str(exc) else ''}") from None
        return _signature_source(tf, loaded, signature, str(folder))
    if path.suffix in (".keras", ".h5", ".hdf5"):
        try:
            keras_model = tf.keras.models.load_model(str(path), compile=False)
        except Exception as exc:
            raise ModelLoadError(f"{path}: the Keras model cannot be loaded: {type(exc).__name__}: {exc}") from None
        source = _keras_source(tf, keras_model, input_shapes)
        source.where = str(path)
        return source
    graph_def = tf.compat.v1.GraphDef()
    try:
        graph_def.ParseFromString(path.read_bytes())
    except Exception as exc:
        raise ModelLoadError(f"{path}: not a frozen GraphDef ({type(exc).__name__}: {exc})",
                             hint="pass a SavedModel directory, a .keras file or a frozen .pb GraphDef") from None
    if not graph_def.node:
        raise ModelLoadError(f"{path}: not a frozen GraphDef (it has no nodes)")
    return _graph_def_source(graph_def, str(path), outputs, name=path.stem)


def _signature_source(tf, loaded, signature: str, where: str) -> Source:
    signatures = getattr(loaded, "signatures", {}) or {}
    if signature not in signatures:
        raise ModelLoadError(f"{where}: the SavedModel has no signature {signature!r}; it has "
                             f"{sorted(signatures) or 'none'}", hint="pass signature=<one of them>")
    return _function_source(tf, signatures[signature], where, Path(str(where)).name or "main")


def _keras_source(tf, model, input_shapes) -> Source:
    try:
        tensors = list(model.inputs)
    except (AttributeError, ValueError):
        tensors = None
    if not tensors:
        if input_shapes is None:
            raise ModelLoadError(f"Keras model {model.name!r} has no defined inputs",
                                 hint="build it with keras.Input, or pass input_shapes=[...]")
        specs = [tf.TensorSpec(shape, tf.float32, name=f"input_{i}")
                 for i, shape in enumerate(_shape_list(input_shapes, None))]
    else:
        names = [getattr(t, "name", None) or f"input_{i}" for i, t in enumerate(tensors)]
        shapes = _override_shapes(names, [tuple(t.shape) for t in tensors], input_shapes)
        specs = [tf.TensorSpec(shape, t.dtype, name=name) for name, shape, t in zip(names, shapes, tensors)]

    def call(*xs):
        return model(list(xs) if len(xs) > 1 else xs[0], training=False)

    fn = tf.function(call, autograph=False).get_concrete_function(*specs)
    source = _function_source(tf, fn, f"Keras model {model.name!r}", model.name)
    names = list(getattr(model, "output_names", None) or [])
    if len(names) == len(source.outputs) and len(set(names)) == len(names):
        source.outputs = [(name, tensor) for name, (_, tensor) in zip(names, source.outputs)]
    return source


def _trace(tf, fn, input_shapes):
    """The concrete function of a tf.function (its input_signature, or float32 ``input_shapes``)."""
    if getattr(fn, "input_signature", None) is not None:
        return fn.get_concrete_function()
    if input_shapes is None:
        raise ModelLoadError("a tf.function without an input_signature needs input_shapes=",
                             hint="decorate it with input_signature=[tf.TensorSpec(...)], or pass "
                                  "input_shapes (float32 inputs)")
    if isinstance(input_shapes, dict):
        specs = [tf.TensorSpec(shape, tf.float32, name=name) for name, shape in input_shapes.items()]
    else:
        specs = [tf.TensorSpec(shape, tf.float32, name=f"input_{i}")
                 for i, shape in enumerate(_shape_list(input_shapes, None))]
    return fn.get_concrete_function(*specs)


def _function_source(tf, fn, where: str, name: str) -> Source:
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    try:
        frozen = convert_variables_to_constants_v2(fn, lower_control_flow=False)
    except Exception as exc:
        raise ModelLoadError(f"{where}: freezing the variables failed: {type(exc).__name__}: {exc}") from None
    inputs = [(t.op.name, t.op.name) for t in frozen.inputs if t.dtype != tf.resource]
    flat = tf.nest.flatten(frozen.structured_outputs)
    structure = frozen.structured_outputs
    if isinstance(structure, dict) and all(not isinstance(v, (dict, list, tuple)) for v in structure.values()):
        names = sorted(structure)  # tf.nest flattens a dict in sorted key order
    else:
        names = [f"output_{i}" for i in range(len(flat))]
    outputs = [(n, t.name) for n, t in zip(names, flat) if t is not None]
    return Source(frozen.graph.as_graph_def(), inputs, outputs, where, name)


def _graph_def_source(graph_def, where: str, outputs, name: str = "main") -> Source:
    """A frozen GraphDef: its Placeholders are the inputs; the outputs are given, or are the
    tensors no op reads (sinks)."""
    nodes = [n for n in graph_def.node]
    inputs = [(n.name, n.name) for n in nodes if n.op == "Placeholder"]
    if outputs is None:
        read = {i.split(":")[0].lstrip("^") for n in nodes for i in n.input}
        sinks = [n for n in nodes if n.name not in read and n.op not in ("NoOp", "Const", "Placeholder", "Assert")]
        names = [(n.name, f"{n.name}:0") for n in sinks]
    else:
        names = [(o.split(":")[0], o if ":" in o else f"{o}:0") for o in outputs]
    if not names:
        raise ModelLoadError(f"{where}: the GraphDef has no outputs", hint="pass outputs=[tensor names]")
    return Source(graph_def, inputs, names, where, name)


# -- shapes --------------------------------------------------------------------------------

def _shape_list(input_shapes, count: int | None) -> list:
    """``input_shapes`` as one shape per input: a list of shapes, or one shape for one input."""
    shapes = list(input_shapes)
    if shapes and all(isinstance(d, int) or d is None for d in shapes):
        shapes = [shapes]  # a single shape
    if count is not None and len(shapes) != count:
        raise OptionError(f"input_shapes gives {len(shapes)} shape(s) for {count} input(s)")
    return [None if s is None else tuple(s) for s in shapes]


def _override_shapes(names: list[str], shapes: list, input_shapes) -> list:
    """The inputs' shapes with ``input_shapes`` (by name, or in order) applied; a given dim may
    only replace an unknown one or repeat a known one."""
    if input_shapes is None:
        return shapes
    if isinstance(input_shapes, dict):
        unknown = sorted(set(input_shapes) - set(names))
        if unknown:
            raise OptionError(f"input_shapes names unknown input(s) {unknown}; the inputs are {names}")
        given = [input_shapes.get(n) for n in names]
    else:
        given = _shape_list(input_shapes, len(names))
    result = []
    for name, old, new in zip(names, shapes, given):
        if new is None:
            result.append(old)
            continue
        new = tuple(None if d is None or d == -1 else int(d) for d in new)
        if old is not None and (len(old) != len(new) or any(
                o is not None and n is not None and o != n for o, n in zip(old, new))):
            raise OptionError(f"input_shapes gives input {name!r} shape {list(new)}, but the model "
                              f"fixes it to {list(old)}")
        result.append(new)
    return result


def build_graph(tf, source: Source, input_shapes):
    """The ``tf.Graph`` of ``source`` (placeholder shapes from ``input_shapes``) and its
    (name, tensor) inputs and outputs."""
    graph_def = tf.compat.v1.GraphDef()
    graph_def.CopyFrom(source.graph_def)
    nodes = {n.name: n for n in graph_def.node}
    names = [name for name, _ in source.inputs]
    old = []
    for _, op_name in source.inputs:
        attr = nodes[op_name].attr["shape"].shape
        old.append(None if attr.unknown_rank else tuple(None if d.size < 0 else d.size for d in attr.dim))
    new = _override_shapes(names, old, input_shapes)
    for (_, op_name), shape in zip(source.inputs, new):
        if shape is not None:
            nodes[op_name].attr["shape"].shape.CopyFrom(tf.TensorShape(shape).as_proto())
    for node in graph_def.node:
        node.attr.pop("_output_shapes", None)
    graph = tf.Graph()
    try:
        with graph.as_default():
            tf.graph_util.import_graph_def(graph_def, name="")
    except Exception as exc:
        raise ModelLoadError(f"{source.where}: TensorFlow cannot import the graph: {type(exc).__name__}: "
                             f"{str(exc).splitlines()[0] if str(exc) else ''}") from None
    try:
        inputs = [(name, graph.get_tensor_by_name(f"{op_name}:0")) for name, op_name in source.inputs]
        outputs = [(name, graph.get_tensor_by_name(t)) for name, t in source.outputs]
    except (KeyError, ValueError) as exc:
        raise ModelLoadError(f"{source.where}: {exc}") from None
    return graph, inputs, outputs
