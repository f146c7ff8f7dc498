"""The textual IR, parsing side: ``parse_graph(text, weights)`` rebuilds what ``print_graph`` wrote.

A small regex lexer and a recursive-descent parser over the grammar in docs/ir-text-format.md.
The graph is built through the Graph API (``add_input``, ``add_constant``, ``add_node`` with the
printed output types), so use-def lists are right and no type inference runs; names come back
exactly as printed. Bad text raises IRParseError with ``line:column``.
"""

from __future__ import annotations

import math
import re
import struct
from typing import Any, Mapping

import ml_dtypes
import numpy as np

from qir.errors import IRParseError, QirError
from qir.ir.graph import Graph, Value
from qir.ir.printer import UINT_BY_SIZE, format_type, nan_bits, splat
from qir.ir.types import DType, OptionalType, QuantParams, SequenceType, TensorType, Type

_STRING = r'"(?:[^"\\\n]|\\.)*"'
# Each match is optional whitespace/comments (atomic: never given back) and one token;
# the most frequent kinds come first. inf/nan are numbers, so 'float' precedes 'ident'.
_TOKEN = re.compile(rf"""
    (?>(?:[ \t\r\n]+|//[^\n]*)*)
    (?:
      (?P<punct>->|[()\[\]{{}}<>,=:?*])
    | (?P<value>%(?:[A-Za-z0-9_.$/-]+|{_STRING}))
    | (?P<float>[-+]?(?:\d+\.\d*(?:[eE][-+]?\d+)?|\d+[eE][-+]?\d+|inf|nan(?::0x[0-9a-fA-F]+)?)(?![A-Za-z0-9_.]))
    | (?P<int>[-+]?\d+(?![A-Za-z0-9_.]))
    | (?P<ident>[A-Za-z_][A-Za-z0-9_.]*)
    | (?P<string>{_STRING})
    | (?P<at>@(?:[A-Za-z0-9_.$/-]+|{_STRING}))
    | (?P<digest>\#sha256:[0-9a-f]{{64}})
    | (?P<error>[^ \t\r\n])
    )
""", re.VERBOSE)

_EOF = "eof"
_COMPLEX = (DType.COMPLEX64, DType.COMPLEX128)
_UNESCAPE = {'"': '"', "\\": "\\", "n": "\n", "t": "\t", "r": "\r"}
_UNICODE_ESCAPE = re.compile(r"u\{([0-9a-fA-F]{1,6})\}")


class _Token:
    __slots__ = ("kind", "text", "pos")

    def __init__(self, kind: str, text: str, pos: int):
        self.kind = kind
        self.text = text
        self.pos = pos


def tokenize(text: str, source: str = "<text>") -> list[_Token]:
    """The tokens of ``text`` (whitespace and // comments dropped), ending with an eof token.

    Punctuation tokens have their own text as kind ("(", "->", ...).
    """
    tokens = []
    for m in _TOKEN.finditer(text):
        kind = m.lastgroup
        value = m.group(kind)
        pos = m.start(kind)
        if kind == "punct":
            kind = value
        elif kind == "error":
            if value == '"':
                raise _error(text, pos, source, "unterminated string (a string ends on its own line; "
                                                "write a newline as \\n)")
            raise _error(text, pos, source, f"unexpected character {value!r}")
        tokens.append(_Token(kind, value, pos))
    tokens.append(_Token(_EOF, "", len(text)))
    return tokens


def _error(text: str, pos: int, source: str, message: str, hint: str | None = None) -> IRParseError:
    line = text.count("\n", 0, pos) + 1
    column = pos - (text.rfind("\n", 0, pos) + 1) + 1
    return IRParseError(f"{source}:{line}:{column}: {message}", hint=hint)


def unquote(literal: str) -> str:
    """The text of a double-quoted string literal (escapes: \\" \\\\ \\n \\t \\r \\u{hex})."""
    body = literal[1:-1]
    if "\\" not in body:
        return body
    out, i = [], 0
    while i < len(body):
        ch = body[i]
        if ch != "\\":
            out.append(ch)
            i += 1
            continue
        nxt = body[i + 1]
        if nxt in _UNESCAPE:
            out.append(_UNESCAPE[nxt])
            i += 2
            continue
        m = _UNICODE_ESCAPE.match(body, i + 1)
        if m is None or int(m.group(1), 16) > 0x10FFFF:
            raise ValueError(f"bad escape \\{nxt} in string {literal}")
        out.append(chr(int(m.group(1), 16)))
        i = m.end()
    return "".join(out)


def parse_float(text: str) -> float:
    """A float token as a Python float (``nan:0x…`` gives those float64 bits)."""
    if text.startswith(("nan:", "-nan:", "+nan:")):
        bits = int(text.split(":", 1)[1], 16)
        if bits >= 1 << 64:
            raise ValueError(f"NaN bits {text} do not fit a float64")
        return struct.unpack("<d", struct.pack("<Q", bits))[0]
    return float(text)


def parse_graph(text: str, weights: Mapping[str, Any] | None = None, *, source: str = "<text>") -> Graph:
    """Rebuild a Graph from its textual form.

    ``weights`` maps digests (``"sha256:<hex>"``) to the arrays (or raw bytes) of the large
    constants the text refers to, as ``print_graph`` or the ``.weights.npz`` sidecar give them.
    ``source`` names the text in error messages.
    """
    parser = _Parser(text, weights, source)
    try:
        graph = parser.graph(None, _Scope(None))
    except RecursionError:
        raise IRParseError(f"{source}: the text nests lists, types or graphs too deeply") from None
    parser.expect(_EOF)
    return graph


class _Scope:
    """Names visible in one graph, chained to the enclosing graph's scope."""

    __slots__ = ("names", "outer")

    def __init__(self, outer: "_Scope | None"):
        self.names: dict[str, Value] = {}
        self.outer = outer

    def lookup(self, name: str) -> Value | None:
        scope = self
        while scope is not None:
            value = scope.names.get(name)
            if value is not None:
                return value
            scope = scope.outer
        return None


class _Parser:
    def __init__(self, text: str, weights: Mapping[str, Any] | None, source: str):
        self.text = text
        self.source = source
        self.weights = weights
        self.tokens = tokenize(text, source)
        self.i = 0

    # -- token helpers ---------------------------------------------------------------------
    def error(self, message: str, token: _Token | None = None, hint: str | None = None) -> IRParseError:
        token = token or self.tokens[self.i]
        return _error(self.text, token.pos, self.source, message, hint)

    @property
    def peek(self) -> _Token:
        return self.tokens[self.i]

    def next(self) -> _Token:
        token = self.tokens[self.i]
        self.i += 1
        return token

    def accept(self, kind: str, text: str | None = None) -> _Token | None:
        token = self.tokens[self.i]
        if token.kind == kind and (text is None or token.text == text):
            self.i += 1
            return token
        return None

    def expect(self, kind: str, text: str | None = None, what: str | None = None) -> _Token:
        token = self.tokens[self.i]
        if token.kind == kind and (text is None or token.text == text):
            self.i += 1
            return token
        wanted = what or (repr(text) if text is not None else kind)
        got = "end of text" if token.kind == _EOF else repr(token.text)
        raise self.error(f"expected {wanted}, got {got}")

    def keyword(self, word: str) -> bool:
        return self.accept("ident", word) is not None

    def string(self, token: _Token) -> str:
        try:
            return unquote(token.text)
        except ValueError as exc:
            raise self.error(str(exc), token) from None

    def sigil_name(self, token: _Token) -> str:
        """The name in a %value or @name token."""
        body = token.text[1:]
        return self.string(_Token("string", body, token.pos + 1)) if body.startswith('"') else body

    def int_of(self, token: _Token) -> int:
        try:
            return int(token.text)
        except ValueError as exc:  # e.g. more digits than Python converts
            raise self.error(f"bad integer: {exc}", token) from None

    def float_of(self, token: _Token) -> float:
        try:
            return parse_float(token.text)
        except (ValueError, OverflowError) as exc:
            raise self.error(f"bad number: {exc}", token) from None

    def name_or_string(self, what: str) -> str:
        """An identifier or a quoted string (op names, attribute keys, dim symbols)."""
        token = self.next()
        if token.kind == "ident":
            return token.text
        if token.kind == "string":
            return self.string(token)
        self.i -= 1
        raise self.error(f"expected {what}, got {token.text!r}")

    def comma_list(self, close: str, item) -> list:
        """Items separated by commas up to the ``close`` punctuation (consumed)."""
        items = []
        if self.accept(close):
            return items
        while True:
            items.append(item())
            if self.accept(close):
                return items
            self.expect(",", what=f"',' or {close!r}")

    # -- graphs ----------------------------------------------------------------------------
    def graph(self, parent: Graph | None, outer: _Scope | None) -> Graph:
        self.expect("ident", "graph", "'graph'")
        graph = Graph(self.sigil_name(self.expect("at", what="@name of the graph")), parent=parent)
        scope = _Scope(outer)
        self.expect("(")
        for name, type, token in self.comma_list(")", self.typed_name):
            self.define(scope, name, token)
            value = graph.add_input(name, type)
            value.name = name  # a name shadowing an outer one keeps its spelling
            scope.names[name] = value
        self.expect("->")
        self.expect("(")
        declared = self.comma_list(")", self.typed_name)
        self.expect("{")
        return_token = self.peek
        while not self.keyword("return"):
            self.statement(graph, scope)
            return_token = self.peek
        returned = []
        if self.peek.kind == "value":
            returned = [self.next()]
            while self.accept(","):
                returned.append(self.expect("value", what="%value"))
        self.expect("}", what="'}' ending the graph")
        graph.outputs = self.outputs(declared, returned, scope, return_token)
        return graph

    def typed_name(self) -> tuple[str, Type | None, _Token]:
        token = self.expect("value", what="%name")
        self.expect(":")
        return self.sigil_name(token), self.type(), token

    def define(self, scope: _Scope, name: str, token: _Token) -> None:
        if name in scope.names:
            raise self.error(f"value %{name} is defined twice in this graph", token)

    def outputs(self, declared: list, returned: list[_Token], scope: _Scope, where: _Token) -> list[Value]:
        names = [self.sigil_name(t) for t in returned]
        if names != [name for name, _, _ in declared]:
            raise self.error(f"'{' '.join(['return'] + ['%' + n for n in names])}' does not match the outputs "
                             f"declared in the graph's signature ({', '.join('%' + d[0] for d in declared)})",
                             where)
        values = []
        for (name, type, token) in declared:
            value = scope.lookup(name)
            if value is None:
                raise self.error(f"graph output %{name} is not defined", token)
            if format_type(value.type) != format_type(type):  # as text: NaN scales compare equal
                raise self.error(f"graph output %{name} is declared as {format_type(type)} but defined as "
                                 f"{format_type(value.type)}", token)
            values.append(value)
        return values

    def statement(self, graph: Graph, scope: _Scope) -> None:
        token = self.peek
        if token.kind == "ident" and token.text == "doc":
            self.next()
            graph.doc = self.string(self.expect("string", what="a string"))
        elif token.kind == "ident" and token.text == "meta":
            self.next()
            key = self.string(self.expect("string", what="a string key"))
            self.expect("=")
            graph.metadata[key] = self.string(self.expect("string", what="a string value"))
        elif token.kind == "value":
            outs = [self.next()]
            while self.accept(","):
                outs.append(self.expect("value", what="%name"))
            self.expect("=")
            if self.keyword("const"):
                if len(outs) != 1:
                    raise self.error("a constant defines one value", outs[1])
                self.constant(graph, scope, outs[0])
            else:
                self.node(graph, scope, outs)
        elif token.kind in ("ident", "string"):
            self.node(graph, scope, [])
        else:
            got = "end of text" if token.kind == _EOF else repr(token.text)
            raise self.error(f"expected a statement (%value = ..., an op, doc, meta or return), got {got}")

    # -- constants and tensors -------------------------------------------------------------
    def constant(self, graph: Graph, scope: _Scope, out: _Token) -> None:
        name = self.sigil_name(out)
        self.define(scope, name, out)
        array = self.tensor(f"constant %{name}")
        explicit = self.accept(":") is not None
        type = self.type() if explicit else None
        value = graph.add_constant(array, name, type)
        if value.name != name:  # shadowing an outer name: keep the printed spelling
            del graph.constants[value.name]
            value.name = name
            graph.constants[name] = value
        if explicit:
            value.type = type  # also when the text says '?' (no type)
        scope.names[name] = value

    def tensor(self, what: str) -> np.ndarray:
        """``dtype[static shape] payload`` where the payload is inline or a #sha256 digest."""
        dtype = self.dtype()
        head = self.peek
        self.expect("[")
        shape = tuple(self.comma_list("]", lambda: self.int_token("a static dim")))
        if any(d < 0 for d in shape):
            raise self.error(f"{what}: negative dim in shape {list(shape)}", head)
        if self.peek.kind == "digest":
            return self.weight(self.next(), dtype, shape, what)
        if self.keyword("splat"):  # one element broadcast to the shape: a zero-stride view
            start = self.peek
            leaves: list[_Token] = []
            self.payload(leaves, dtype)
            if start.kind == "[" or len(leaves) != (2 if dtype in _COMPLEX else 1):
                raise self.error(f"{what}: a splat is written with one bare scalar", start)
            return splat(self.make_array(leaves, dtype, (), what), dtype.numpy, shape)
        start = self.peek
        leaves: list[_Token] = []
        self.payload(leaves, dtype)
        size = math.prod(shape)
        per_element = 2 if dtype in _COMPLEX else 1  # (re, im) gives two leaves
        if len(leaves) != size * per_element:
            raise self.error(f"{what}: {dtype.value}{list(shape)} needs {size} elements, "
                             f"got {len(leaves) // per_element}", start)
        if not shape and start.kind == "[":
            raise self.error(f"{what}: a rank-0 tensor is written as a bare scalar", start)
        return self.make_array(leaves, dtype, shape, what)

    def payload(self, leaves: list, dtype: DType) -> None:
        """Collect the element tokens of a (nested) list literal or scalar."""
        if self.accept("["):
            if self.accept("]"):
                return
            while True:
                self.payload(leaves, dtype)
                if self.accept("]"):
                    return
                self.expect(",", what="',' or ']'")
        elif dtype in _COMPLEX:
            self.expect("(", what="a complex number (re, im)")
            leaves.append(self.number_token())
            self.expect(",")
            leaves.append(self.number_token())
            self.expect(")")
        else:
            leaves.append(self.next())

    def number_token(self) -> _Token:
        token = self.next()
        if token.kind not in ("int", "float"):
            self.i -= 1
            raise self.error(f"expected a number, got {token.text!r}")
        return token

    def make_array(self, leaves: list[_Token], dtype: DType, shape: tuple, what: str) -> np.ndarray:
        if dtype is DType.STRING:
            for t in leaves:
                if t.kind != "string":
                    raise self.error(f"{what}: expected a string element, got {t.text!r}", t)
            return np.array([self.string(t) for t in leaves], dtype=object).reshape(shape)
        if dtype is DType.BOOL:
            values = []
            for t in leaves:
                if t.kind != "ident" or t.text not in ("true", "false"):
                    raise self.error(f"{what}: expected true or false, got {t.text!r}", t)
                values.append(t.text == "true")
            return np.array(values, dtype=np.bool_).reshape(shape)
        if dtype.is_float or dtype in _COMPLEX:
            return self.float_array(leaves, dtype, shape, what)
        return self.int_array(leaves, dtype, shape, what)

    def float_array(self, leaves: list[_Token], dtype: DType, shape: tuple, what: str) -> np.ndarray:
        complex_ = dtype in _COMPLEX
        real = np.dtype(np.float32 if dtype is DType.COMPLEX64 else np.float64) if complex_ else dtype.numpy
        values, nans = [], []
        for i, t in enumerate(leaves):
            if t.kind == "int":
                values.append(float(t.text))  # decimal text: -0 stays -0.0, huge gives inf
            elif t.kind == "float":
                if "nan" in t.text:
                    nans.append((i, t))
                    values.append(math.nan)
                else:
                    values.append(float(t.text))
            else:
                raise self.error(f"{what}: expected a number, got {t.text!r}", t)
        with np.errstate(over="ignore", invalid="ignore"):
            flat = np.array(values, dtype=np.float64).astype(real)
        if nans:
            self.set_nan_bits(flat, nans, what)
        if complex_:
            flat = flat.view(dtype.numpy)
        return flat.reshape(shape)

    def set_nan_bits(self, flat: np.ndarray, nans: list, what: str) -> None:
        """Give each NaN element the exact bits its text names."""
        width = flat.dtype.itemsize
        bits = flat.view(UINT_BY_SIZE[width])
        canonical, negative = nan_bits(flat.dtype)
        for i, token in nans:
            text = token.text.lstrip("+")
            if text == "nan":
                bits[i] = canonical
            elif text == "-nan":
                bits[i] = negative
            else:
                raw = int(text.split(":", 1)[1], 16)
                if raw >= 1 << (8 * width):
                    raise self.error(f"{what}: NaN bits {text} do not fit {width} bytes", token)
                bits[i] = raw

    def int_array(self, leaves: list[_Token], dtype: DType, shape: tuple, what: str) -> np.ndarray:
        info = ml_dtypes.iinfo(dtype.numpy)  # numpy's iinfo does not know int4 & co.
        low, high = int(info.min), int(info.max)
        values = []
        for t in leaves:
            if t.kind != "int":
                raise self.error(f"{what}: expected an integer, got {t.text!r}", t)
            v = self.int_of(t)
            if not low <= v <= high:
                raise self.error(f"{what}: {v} is out of range for {dtype.value} [{low}, {high}]", t)
            values.append(v)
        wide = np.int64 if dtype.is_signed else np.uint64
        return np.array(values, dtype=wide).astype(dtype.numpy).reshape(shape)

    def weight(self, token: _Token, dtype: DType, shape: tuple, what: str) -> np.ndarray:
        """The array behind a ``#sha256:…`` digest, from the weights given to the parser."""
        digest = token.text[1:]
        entry = None if self.weights is None else self.weights.get(digest)
        if entry is None:
            raise self.error(f"{what}: its data #{digest[:19]}… is not in the weights given",
                             token, hint="a .qir file keeps large constants in '<file>.weights.npz' beside "
                                         "it (qir.ir.serialize.load reads both); parse_graph needs weights=")
        try:
            return decode_weight(entry, dtype, shape)
        except QirError as exc:
            raise self.error(f"{what}: {exc.message}", token) from None

    # -- nodes -----------------------------------------------------------------------------
    def node(self, graph: Graph, scope: _Scope, outs: list[_Token]) -> None:
        op_token = self.peek
        op = self.name_or_string("an op name")
        self.expect("(", what=f"'(' after op {op}")
        inputs = self.comma_list(")", lambda: self.operand(scope))
        attrs = self.attr_dict(graph, scope) if self.peek.kind == "{" else {}
        types = None
        if self.accept(":"):
            types = [self.type()]
            while self.accept(","):
                types.append(self.type())
            if len(types) != len(outs):
                raise self.error(f"op {op} defines {len(outs)} value(s) but lists {len(types)} type(s)",
                                 op_token)
        elif not outs:
            types = []
        name = self.sigil_name(self.next()) if self.peek.kind == "at" else None
        provenance = None if name is None else (name,)  # what the printer leaves out
        if self.keyword("from"):
            self.expect("[")
            provenance = tuple(self.comma_list("]", lambda: self.string(self.expect("string"))))
        target = self.string(self.expect("string", what="a target name")) if self.keyword("on") else None
        out_names = [self.sigil_name(t) for t in outs]
        for n, t in zip(out_names, outs):
            self.define(scope, n, t)
            if out_names.count(n) > 1:
                raise self.error(f"value %{n} is defined twice by one node", t)
        try:
            node = graph.add_node(op, inputs, attrs, name=name, output_names=out_names,
                                  output_types=types, num_outputs=len(outs), provenance=provenance)
        except QirError as exc:  # inference of types the text left out
            raise self.error(exc.message, op_token, exc.hint) from None
        if name is not None:
            node.name = name  # keep the printed spelling even if another value took it
        node.target = target
        for value, n in zip(node.outputs, out_names):
            value.name = n
            scope.names[n] = value

    def operand(self, scope: _Scope) -> Value | None:
        token = self.next()
        if token.kind == "ident" and token.text == "_":
            return None
        if token.kind != "value":
            self.i -= 1
            raise self.error(f"expected %value or _ (omitted input), got {token.text!r}")
        name = self.sigil_name(token)
        value = scope.lookup(name)
        if value is None:
            raise self.error(f"value %{name} is used before it is defined (or not defined at all)", token)
        return value

    # -- attributes ------------------------------------------------------------------------
    def attr_dict(self, graph: Graph, scope: _Scope) -> dict[str, Any]:
        self.expect("{")
        attrs: dict[str, Any] = {}

        def item():
            token = self.peek
            key = self.name_or_string("an attribute name")
            if key in attrs:
                raise self.error(f"attribute {key!r} is given twice", token)
            self.expect("=")
            attrs[key] = self.attr_value(graph, scope, key)

        self.comma_list("}", item)
        return attrs

    def attr_value(self, graph: Graph, scope: _Scope, key: str) -> Any:
        token = self.next()
        kind = token.kind
        if kind == "int":
            return self.int_of(token)
        if kind == "float":
            return self.float_of(token)
        if kind == "string":
            return self.string(token)
        if kind == "[":
            return tuple(self.comma_list("]", lambda: self.attr_value(graph, scope, key)))
        if kind == "ident":
            word = token.text
            if word in _WORDS:
                return _WORDS[word]
            if word == "tensor":
                return self.tensor(f"attribute {key!r}")
            if word == "type":
                return self.type()
            if word == "graph":
                self.i -= 1
                return self.graph(graph, scope)
            if word in _DTYPES:
                return _DTYPES[word]
        self.i -= 1
        raise self.error(f"attribute {key!r}: expected a value (number, string, list, true/false, none, "
                         f"dtype, 'tensor …', 'type …' or 'graph …'), got {token.text!r}")

    # -- types -----------------------------------------------------------------------------
    def dtype(self) -> DType:
        token = self.expect("ident", what="a dtype")
        dtype = _DTYPES.get(token.text)
        if dtype is None:
            raise self.error(f"unknown dtype {token.text!r}; known: {', '.join(_DTYPES)}", token)
        return dtype

    def type(self) -> Type | None:
        if self.accept("?"):
            return None
        wrapper = _WRAPPER_TYPES.get(self.peek.text) if self.peek.kind == "ident" else None
        if wrapper is not None:
            self.next()
            self.expect("<")
            elem = self.type()
            self.expect(">")
            return wrapper(elem)
        dtype = self.dtype()
        self.expect("[", what=f"'[' (the shape of the {dtype.value} tensor; [*] when unknown)")
        if self.accept("*"):
            self.expect("]")
            shape = None
        else:
            shape = tuple(self.comma_list("]", self.dim))
        quant = self.quant() if self.peek.kind == "{" else None
        return TensorType(dtype, shape, quant)

    def dim(self):
        token = self.next()
        if token.kind == "int":
            return self.int_of(token)
        if token.kind == "?":
            return "?"
        if token.kind == "ident":
            return token.text
        if token.kind == "string":
            return self.string(token)
        self.i -= 1
        raise self.error(f"expected a dim (integer, symbol or ?), got {token.text!r}")

    def quant(self) -> QuantParams:
        start = self.expect("{")
        fields: dict[str, Any] = {}

        def item():
            token = self.expect("ident", what="a quantization field")
            if token.text not in _QUANT_FIELDS or token.text in fields:
                raise self.error(f"unknown or repeated quantization field {token.text!r}; "
                                 f"known: {', '.join(_QUANT_FIELDS)}", token)
            self.expect("=")
            fields[token.text] = _QUANT_FIELDS[token.text](self)

        self.comma_list("}", item)
        if "scale" not in fields or "zero_point" not in fields:
            raise self.error("quantization needs scale and zero_point", start)
        return QuantParams(**fields)

    def int_token(self, what: str = "an integer") -> int:
        return self.int_of(self.expect("int", what=what))

    def float_value(self) -> float:
        token = self.next()
        if token.kind == "int":
            return float(token.text)
        if token.kind == "float":
            return self.float_of(token)
        self.i -= 1
        raise self.error(f"expected a number, got {token.text!r}")

    def scalar_or_list(self, item):
        if self.accept("["):
            return tuple(self.comma_list("]", item))
        return item()


_WORDS = {"true": True, "false": False, "none": None}
_DTYPES = {d.value: d for d in DType}
_WRAPPER_TYPES = {"seq": SequenceType, "optional": OptionalType}


def _bool(parser: _Parser) -> bool:
    token = parser.expect("ident", what="true or false")
    if token.text not in ("true", "false"):
        raise parser.error(f"expected true or false, got {token.text!r}", token)
    return token.text == "true"


_QUANT_FIELDS = {
    "scale": lambda p: p.scalar_or_list(p.float_value),
    "zero_point": lambda p: p.scalar_or_list(p.int_token),
    "bitwidth": lambda p: p.int_token(),
    "signed": _bool,
    "axis": lambda p: p.int_token(),
}


def decode_weight(entry: Any, dtype: DType, shape: tuple) -> np.ndarray:
    """The array of ``dtype``/``shape`` stored in a weights-table entry.

    An entry is the array itself, or anything holding its raw bytes (bytes, memoryview, a
    uint8 array: what the binary format and the npz sidecar keep). String tensors are stored as
    u32-length-prefixed UTF-8.
    """
    if isinstance(entry, np.ndarray) and entry.dtype == dtype.numpy and entry.shape == shape \
            and dtype is not DType.STRING:
        return entry
    if isinstance(entry, np.ndarray):
        entry = np.ascontiguousarray(entry).reshape(-1).view(np.uint8)
    buffer = memoryview(entry).cast("B")
    size = math.prod(shape)
    if dtype is DType.STRING:
        return _decode_strings(buffer, size).reshape(shape)
    itemsize = dtype.numpy.itemsize
    if len(buffer) != size * itemsize:
        raise QirError(f"its stored data has {len(buffer)} bytes, but {dtype.value}{list(shape)} "
                       f"needs {size * itemsize}")
    return np.frombuffer(buffer, dtype=dtype.numpy).reshape(shape)


def _decode_strings(buffer: memoryview, size: int) -> np.ndarray:
    out = np.empty(size, dtype=object)
    pos = 0
    try:
        for i in range(size):
            (length,) = struct.unpack_from("<I", buffer, pos)
            pos += 4
            if pos + length > len(buffer):
                raise QirError("its stored strings are truncated")
            out[i] = bytes(buffer[pos:pos + length]).decode("utf-8", "surrogatepass")
            pos += length
    except (struct.error, UnicodeDecodeError) as exc:
        raise QirError(f"its stored strings are malformed ({exc})") from None
    if pos != len(buffer):
        raise QirError(f"its stored strings have {len(buffer) - pos} bytes too many")
    return out
