"""The textual IR, printing side: ``print_graph(graph)`` gives text that ``parse_graph`` reads back.

The syntax is documented in docs/ir-text-format.md. In brief::

    graph @main(%x: f32[N,3]) -> (%y: f32[N,3]) {
      %w = const f32[3,3] #sha256:4f2a…          // large: shape + digest (weights kept aside)
      %b = const f32[3] [0.5, -1.0, inf]         // small: inline, exact
      %z = const f32[64,3] splat 0.01             // one value broadcast (a zero-stride view)
      %m = linalg.matmul(%x, %w) : f32[N,3] @mm
      %y = elementwise.add(%m, %b) : f32[N,3] @add from ["Add_0"]
      return %y
    }

Printing is exact: floats use the shortest decimal that reads back to the same bits (NaNs
other than the canonical one print their bits), so print → parse → print is the identity.
"""

from __future__ import annotations

import hashlib
import math
import re
import struct
from typing import Any, MutableMapping

import numpy as np

from qir.errors import QirError
from qir.ir.types import DType, OptionalType, QuantParams, SequenceType, TensorType

#: Constants and tensor attributes with more elements than this print as shape + digest.
INLINE_LIMIT = 16

#: A %value or @graph/@node name printed without quotes.
BARE_NAME = re.compile(r"[A-Za-z0-9_.$/-]+\Z")
#: An op name, attribute key or dim symbol printed without quotes.
IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*\Z")
#: Words the lexer reads as numbers, not identifiers.
NUMBER_WORDS = frozenset({"inf", "nan"})
#: Words an op name cannot be without quotes: they start other statements.
STATEMENT_WORDS = NUMBER_WORDS | {"doc", "meta", "return", "const"}

Weights = MutableMapping[str, Any]


# -- names and strings ---------------------------------------------------------------------

_ESCAPES = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\t": "\\t", "\r": "\\r"}


def quote(text: str) -> str:
    """``text`` as a double-quoted string literal; non-printable characters become \\u{hex}."""
    if text.isprintable() and '"' not in text and "\\" not in text:
        return f'"{text}"'
    out = []
    for ch in text:
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif ch.isprintable():
            out.append(ch)
        else:  # control chars, lone surrogates, line separators: keep the text one line, UTF-8 safe
            out.append(f"\\u{{{ord(ch):x}}}")
    return '"' + "".join(out) + '"'


def format_name(name: str) -> str:
    """A value/graph/node name after its sigil: bare when it can be, quoted otherwise."""
    return name if BARE_NAME.match(name) else quote(name)


def format_ident(name: str, reserved: frozenset = NUMBER_WORDS) -> str:
    """An op name, attribute key or dim symbol: bare when it is a plain identifier."""
    return name if IDENT.match(name) and name not in reserved else quote(name)


# -- numbers -------------------------------------------------------------------------------

_NAN_BITS_F64 = struct.unpack("<Q", struct.pack("<d", math.nan))[0]
_NEG_NAN_BITS_F64 = _NAN_BITS_F64 | (1 << 63)


def format_float(value: float) -> str:
    """A Python float, exactly: repr for numbers, ``nan``/``-nan``/``nan:0x…`` for NaNs."""
    if value != value:
        bits = struct.unpack("<Q", struct.pack("<d", value))[0]
        return _nan_text(bits, _NAN_BITS_F64, _NEG_NAN_BITS_F64, 16)
    return repr(float(value))


def _nan_text(bits: int, canonical: int, negative: int, hex_digits: int) -> str:
    if bits == canonical:
        return "nan"
    if bits == negative:
        return "-nan"
    return f"nan:0x{bits:0{hex_digits}x}"


UINT_BY_SIZE = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}


def nan_bits(dtype: np.dtype) -> tuple[int, int]:
    """The bits of ``nan`` and ``-nan`` in ``dtype``, as this machine converts them.

    The parser uses the same table, so whatever the conversion gives reads back identically.
    """
    key = np.dtype(dtype)
    if key not in _NAN_CACHE:
        uint = UINT_BY_SIZE[key.itemsize]
        with np.errstate(invalid="ignore"):
            pos = np.array([math.nan, -math.nan]).astype(key)
        _NAN_CACHE[key] = tuple(int(b) for b in pos.view(uint))
    return _NAN_CACHE[key]


_NAN_CACHE: dict[np.dtype, tuple[int, int]] = {}


def _float_texts(flat: np.ndarray) -> list[str]:
    """Exact decimal text of each element of a 1-D real float array of any float dtype."""
    dtype = flat.dtype
    if dtype == np.float64:
        texts = [repr(v) for v in flat.tolist()]
        wide = flat
    elif dtype in (np.float32, np.float16):
        texts = [str(v) for v in flat]  # numpy prints the shortest text that round-trips
        wide = flat
    else:  # ml_dtypes floats are exact in float32, whose shortest text converts back exactly
        wide = flat.astype(np.float32)
        texts = [str(v) for v in wide]
    with np.errstate(invalid="ignore"):
        nans = np.flatnonzero(np.isnan(wide))
    if len(nans):
        canonical, negative = nan_bits(dtype)
        bits = flat.view(UINT_BY_SIZE[dtype.itemsize])
        for i in nans:
            texts[i] = _nan_text(int(bits[i]), canonical, negative, 2 * dtype.itemsize)
    return texts


def element_texts(array: np.ndarray, dtype: DType) -> list[str]:
    """The text of every element of ``array`` (C order)."""
    flat = np.ascontiguousarray(array).reshape(-1)
    if dtype is DType.STRING:
        return [quote(str(v)) for v in flat.tolist()]
    if dtype is DType.BOOL:
        return ["true" if v else "false" for v in flat.tolist()]
    if dtype in (DType.COMPLEX64, DType.COMPLEX128):
        parts = _float_texts(flat.view(np.float32 if dtype is DType.COMPLEX64 else np.float64))
        return [f"({parts[i]}, {parts[i + 1]})" for i in range(0, len(parts), 2)]
    if dtype.is_float:
        return _float_texts(flat)
    return [str(v) for v in flat.astype(np.int64 if dtype.is_signed else np.uint64).tolist()]


def format_payload(array: np.ndarray, dtype: DType) -> str:
    """An inline tensor literal: a scalar for rank 0, else nested lists in C order."""
    texts = element_texts(array, dtype)
    if array.ndim == 0:
        return texts[0]
    if array.size == 0:
        return "[]"
    for dim in reversed(array.shape[1:]):
        texts = ["[" + ", ".join(texts[i:i + dim]) + "]" for i in range(0, len(texts), dim)]
    return "[" + ", ".join(texts) + "]"


# -- splats --------------------------------------------------------------------------------

def is_splat(array) -> bool:
    """Whether ``array`` is a splat: one value broadcast to a shape of several elements.

    Only zero-stride views count (what ``np.broadcast_to`` and :func:`splat` give): telling them
    is free, whereas scanning a materialized array for equal elements is not.
    """
    return (isinstance(array, np.ndarray) and array.size > 1 and array.dtype != object
            and all(s == 0 for s in array.strides))


def splat(value, dtype, shape) -> np.ndarray:
    """``value`` broadcast to ``shape`` as a read-only view: a tensor that costs no memory."""
    return np.broadcast_to(np.asarray(value, dtype=dtype), tuple(int(d) for d in shape))


def splat_value(array: np.ndarray) -> np.ndarray:
    """The single element of a splat (a 0-d array of its dtype)."""
    # (slicing, not reshape(-1): that would copy the whole broadcast)
    return np.array(array[(slice(0, 1),) * array.ndim]).reshape(())


def materialized_size(array) -> int:
    """Elements ``array`` really stores: 1 for a splat, else its size."""
    return 1 if is_splat(array) else int(np.asarray(array).size)


# -- weights -------------------------------------------------------------------------------

def encode_strings(array: np.ndarray) -> np.ndarray:
    """A string tensor as uint8 bytes: per element (C order) a u32 LE length and UTF-8 bytes."""
    chunks = []
    for text in np.asarray(array).reshape(-1).tolist():
        data = str(text).encode("utf-8", "surrogatepass")
        chunks.append(struct.pack("<I", len(data)))
        chunks.append(data)
    return np.frombuffer(b"".join(chunks), dtype=np.uint8)


def weight_entry(array: np.ndarray) -> tuple[str, np.ndarray]:
    """``(digest, stored array)`` of a constant kept out of line.

    The digest is ``sha256:<hex>`` of the array's raw bytes (C order, little-endian; strings
    encoded by :func:`encode_strings`). The stored array has exactly those bytes: the array
    itself when it is contiguous, else a contiguous copy (uint8 bytes for strings).
    """
    if array.dtype.kind in "OUS":
        stored = encode_strings(array)
    else:
        stored = np.ascontiguousarray(array)
    digest = hashlib.sha256(raw_bytes(stored)).hexdigest()
    return "sha256:" + digest, stored


def raw_bytes(array: np.ndarray) -> np.ndarray:
    """A uint8 view of a contiguous array's bytes (works for ml_dtypes too)."""
    return array.reshape(-1).view(np.uint8)


# -- types ---------------------------------------------------------------------------------

def format_dim(dim) -> str:
    if isinstance(dim, str):
        return "?" if dim == "?" else format_ident(dim)
    return str(dim)


def format_quant(quant: QuantParams) -> str:
    """``{scale=…, zero_point=…}`` plus bitwidth/signed/axis where they are not the defaults."""
    per_tensor = quant.axis is None

    def seq(values, fmt) -> str:
        if per_tensor and len(values) == 1:
            return fmt(values[0])
        return "[" + ",".join(fmt(v) for v in values) + "]"

    parts = [f"scale={seq(quant.scale, format_float)}", f"zero_point={seq(quant.zero_point, str)}"]
    if quant.bitwidth != 8:
        parts.append(f"bitwidth={quant.bitwidth}")
    if not quant.signed:
        parts.append("signed=false")
    if quant.axis is not None:
        parts.append(f"axis={quant.axis}")
    return "{" + ", ".join(parts) + "}"


def format_type(type) -> str:
    """A type as text: ``f32[N,3,?]``, ``f32[*]`` (unknown rank), ``u8[4]{scale=…}``,
    ``seq<f32[*]>``, ``optional<i64[]>``, ``?`` (no type)."""
    if type is None:
        return "?"
    if isinstance(type, TensorType):
        shape = "[*]" if type.shape is None else "[" + ",".join(format_dim(d) for d in type.shape) + "]"
        text = type.dtype.value + shape
        return text if type.quant is None else text + format_quant(type.quant)
    if isinstance(type, SequenceType):
        return f"seq<{format_type(type.elem)}>"
    if isinstance(type, OptionalType):
        return f"optional<{format_type(type.elem)}>"
    raise QirError(f"cannot print type {type!r}: not a TensorType, SequenceType or OptionalType")


# -- graphs --------------------------------------------------------------------------------

def print_graph(graph, weights: Weights | None = None, *, inline_limit: int | None = INLINE_LIMIT) -> str:
    """The textual form of ``graph`` (and its subgraphs).

    Tensors with more than ``inline_limit`` elements (None: no limit) print as shape + digest;
    their arrays go into ``weights`` (digest → array) when it is given, so that
    ``parse_graph(text, weights)`` rebuilds the graph. Without ``weights`` the text is for
    reading only when it has digests.
    """
    return _Printer(weights, inline_limit).graph(graph, "") + "\n"


class _Printer:
    def __init__(self, weights: Weights | None, inline_limit: int | None):
        self.weights = weights
        self.inline_limit = inline_limit

    def graph(self, graph, indent: str) -> str:
        inner = indent + "  "
        params = ", ".join(self.typed(v) for v in graph.inputs)
        results = ", ".join(self.typed(v) for v in graph.outputs)
        lines = [f"graph @{format_name(graph.name)}({params}) -> ({results}) {{"]
        if graph.doc:
            lines.append(f"{inner}doc {quote(graph.doc)}")
        for key, value in graph.metadata.items():
            lines.append(f"{inner}meta {quote(str(key))} = {quote(str(value))}")
        for value in graph.constants.values():
            lines.append(inner + self.constant(value))
        for node in graph.nodes:
            lines.append(inner + self.node(node, inner))
        returned = ", ".join("%" + format_name(v.name) for v in graph.outputs)
        lines.append(f"{inner}return {returned}".rstrip())
        lines.append(indent + "}")
        return "\n".join(lines)

    @staticmethod
    def typed(value) -> str:
        return f"%{format_name(value.name)}: {format_type(value.type)}"

    def constant(self, value) -> str:
        array = value.const
        if not isinstance(array, np.ndarray):
            array = np.asarray(array)
        text = f"%{format_name(value.name)} = const {self.tensor(array, f'constant %{value.name}')}"
        if value.type != _literal_type(array):
            text += f" : {format_type(value.type)}"
        return text

    def tensor(self, array: np.ndarray, what: str) -> str:
        """``dtype[shape] payload``: the payload inline or ``#sha256:…``."""
        try:
            dtype = DType.from_numpy(array.dtype)
        except QirError as exc:
            raise QirError(f"cannot print {what}: {exc.message}") from None
        head = f"{dtype.value}[{','.join(str(d) for d in array.shape)}]"
        if is_splat(array):  # one value broadcast: no weights entry, whatever its size
            return f"{head} splat {format_payload(splat_value(array), dtype)}"
        if self.inline_limit is not None and array.size > self.inline_limit:
            digest, stored = weight_entry(array)
            if self.weights is not None:
                self.weights.setdefault(digest, stored)
            return f"{head} #{digest}"
        return f"{head} {format_payload(array, dtype)}"

    def node(self, node, indent: str) -> str:
        args = ", ".join("_" if v is None else "%" + format_name(v.name) for v in node.inputs)
        text = f"{format_ident(node.op, STATEMENT_WORDS)}({args})"
        if node.outputs:
            outs = ", ".join("%" + format_name(v.name) for v in node.outputs)
            text = f"{outs} = {text}"
        if node.attrs:
            where = f"node {node.name} ({node.op})"
            attrs = ", ".join(f"{format_ident(str(k))}={self.attr(v, indent, f'{where} attribute {k!r}')}"
                              for k, v in node.attrs.items())
            text += " {" + attrs + "}"
        if node.outputs:
            text += " : " + ", ".join(format_type(v.type) for v in node.outputs)
        text += f" @{format_name(node.name)}"
        if tuple(node.provenance) != (node.name,):
            text += " from [" + ", ".join(quote(str(p)) for p in node.provenance) + "]"
        if node.target is not None:
            text += f" on {quote(str(node.target))}"
        return text

    def attr(self, value, indent: str, what: str) -> str:
        from qir.ir.graph import Graph

        if value is None:
            return "none"
        if isinstance(value, (bool, np.bool_)):
            return "true" if value else "false"
        if isinstance(value, (int, np.integer)):
            return str(int(value))
        if isinstance(value, (float, np.floating)):
            return format_float(float(value))
        if isinstance(value, str):
            return quote(value)
        if isinstance(value, DType):
            return value.value
        if isinstance(value, (TensorType, SequenceType, OptionalType)):
            return "type " + format_type(value)
        if isinstance(value, np.ndarray):
            return "tensor " + self.tensor(value, what)
        if isinstance(value, Graph):
            return self.graph(value, indent)
        if isinstance(value, (list, tuple)):
            items = [self.attr(v, indent, what) for v in value]
            simple = all(isinstance(v, (bool, int, float, str, np.generic, DType)) for v in value)
            return "[" + ("," if simple else ", ").join(items) + "]"
        raise QirError(f"cannot print {what}: values of type {type(value).__name__} have no textual form",
                       hint="attributes hold int, float, str, lists, numpy arrays, DType, Type or Graph")


def _literal_type(array: np.ndarray) -> TensorType:
    """The type a constant gets from its array alone (what the parser gives it by default)."""
    return TensorType(DType.from_numpy(array.dtype), array.shape)
