"""QNN / AIMET encodings JSON in and out (``--quantization_overrides``, ``quantization_config.json``).

Layouts read (told apart by the type of the two sections, not by ``version``):

- **AIMET 0.6.1 / QNN overrides / hand-written**: ``{"activation_encodings": {name: E | [E, ...]},
  "param_encodings": {...}}`` with ``E = {bitwidth, dtype, is_symmetric, min, max, scale, offset}``;
  a list with one E per channel is per-channel. A hand-written E may also give ``scale`` /
  ``offset`` / ``min`` / ``max`` as lists (one entry per channel).
- **AIMET 1.0.0**: ``{"version": "1.0.0", "activation_encodings": [R, ...], "param_encodings":
  [...]}`` with ``R = {name, dtype: INT|FLOAT, enc_type: PER_TENSOR|PER_CHANNEL, bw, is_sym,
  scale: [...], offset: [...]}`` (no min/max). PER_BLOCK / LPBQ / VECTOR are refused.

File-level ``activation_bitwidth`` / ``param_bitwidth`` / ``bias_bitwidth`` are read from the top
level (or AIMET's ``quantizer_args``); an int entry without a bitwidth takes its section's default.

Conventions. The IR says real = scale × (q − zero_point). QNN and AIMET say real = scale × (q +
offset), where q is the *unsigned* code 0 … 2^b − 1, so offset ≤ 0; a signed tensor's code is
q_s = q − 2^(b−1) (AIMET's exporters write ``offset − 2^(b−1)`` for signed quantizers). Hence:

- offset o ≤ 0, not symmetric → unsigned, zero_point −o.
- is_symmetric and o = −2^(b−1) (AIMET's int8 weights: offset −128, "uint storage") → signed,
  zero_point 0.
- is_symmetric and o = 0 with min ≈ −2^(b−1) × scale (QNN's signed form), or without min/max in
  the object layouts → signed, zero_point 0.
- is_symmetric and o = 0 with min ≈ 0 (unsigned symmetric, e.g. after ReLU), or without min/max
  in 1.0.0 files (AIMET writes −2^(b−1) for every signed symmetric quantizer) → unsigned,
  zero_point 0.
- ``"is_signed": true`` (qir's extension, written for signed asymmetric tensors, which neither
  format can express) → signed, zero_point −o − 2^(b−1); ``false`` forces unsigned storage.
- dtype "float" / "FLOAT" → None: the tensor stays float.

The trap: hand-written files often use offset as a zero point (offset 127 for min −2.5). When an
entry gives min (and scale/offset) qir checks which reading its numbers fit, within about one
scale step: QNN's (min ≈ scale × (qmin + offset)) or the zero-point one (min ≈ scale × (qmin −
offset)), unsigned storage before signed. Entries read the zero-point way are named in one
``EncodingsWarning``; entries that fit neither are refused. Without min, QNN's convention is
assumed and a positive offset (which QNN never writes) is refused as ambiguous. Entries with only
min/max get QNN's parameters: asymmetric over [min, max] widened to contain 0, or, when
symmetric, signed zero point 0 with scale = max|min, max| / (2^(b−1) − 1) (unsigned, scale =
max / (2^b − 1), when min ≥ 0 or ``"is_signed": false``).

Per-channel entries carry no axis in either format: they get axis 0 (the output channels of
conv / PyTorch linear weights) unless the entry has an ``"axis"`` key, which qir writes.

Writing (``dump_encodings``) uses AIMET's offsets (offset = −zero_point for unsigned tensors,
−zero_point − 2^(b−1) for signed ones), ``min = scale × (qmin − zero_point)`` and ``max = scale ×
(qmax − zero_point)`` in the tensor's own storage range, ``is_symmetric`` for signed tensors with
zero point 0, and the two extensions above only where needed (``axis`` on per-channel entries,
``is_signed`` on signed asymmetric ones), so every file qir writes reads back to identical
QuantParams. Biases are the 32-bit params (QNN's param bitwidths are 4/8/16).
"""

from __future__ import annotations

import difflib
import json
import math
import os
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

import attrs

from qir.errors import QirError
from qir.ir.graph import Graph, Value
from qir.ir.serialize import write_atomic
from qir.ir.types import DType, QuantParams, TensorType
from qir.passes.quantize.params import activation_params

BITWIDTHS = (4, 8, 16, 32)
"""Integer bitwidths an encoding may have."""

FLOAT_BITWIDTHS = (16, 32)
"""Bitwidths a ``dtype: float`` entry may have."""

LAYOUTS = ("aimet-0.6.1", "aimet-1.0.0")
"""What ``dump_encodings`` writes."""

TOLERANCE_STEPS = 1.01
"""How far (in scale steps) min may be from what a convention predicts and still fit it."""

SECTIONS = ("activation_encodings", "param_encodings")
_DEFAULT_KEYS = ("activation_bitwidth", "param_bitwidth", "bias_bitwidth")
_QNN, _ZERO_POINT = "QNN's real = scale × (q + offset)", "offset as a zero point"


class EncodingsError(QirError):
    """An encodings file is malformed or does not match the model; names the file and entry."""


class EncodingsWarning(UserWarning):
    """An encodings file was read with an assumption the user should check (e.g. its offsets)."""


@attrs.frozen
class Encodings:
    """Quantization of named tensors, as read from or written to an encodings file.

    ``activations`` (graph inputs and node outputs) and ``params`` (constants) map a tensor name
    to its QuantParams, or to None when the tensor stays float. The bitwidths are the file-level
    defaults (None when the file gives none). ``source`` names the file, for messages.
    """

    activations: dict[str, QuantParams | None] = attrs.field(factory=dict, converter=dict)
    params: dict[str, QuantParams | None] = attrs.field(factory=dict, converter=dict)
    activation_bitwidth: int | None = None
    param_bitwidth: int | None = None
    bias_bitwidth: int | None = None
    source: str | None = attrs.field(default=None, eq=False)

    def check_names(self, value_names: Iterable[str] | None = None,
                    param_names: Iterable[str] | None = None) -> None:
        """Raise EncodingsError listing every entry whose name matches no tensor of the model.

        Activation entries are checked when ``value_names`` is given, param entries when
        ``param_names`` is; a name counts as known if it is in either list (files sometimes put
        a weight under activation_encodings). Each unknown name comes with the closest names.
        """
        known = set(value_names or ()) | set(param_names or ())
        unknown = [(section, name)
                   for section, entries, names in (("activation_encodings", self.activations, value_names),
                                                   ("param_encodings", self.params, param_names))
                   if names is not None
                   for name in entries if name not in known]
        if not unknown:
            return
        candidates = sorted(known)
        lines = []
        for section, name in unknown:
            close = difflib.get_close_matches(name, candidates, n=3, cutoff=0.5)
            found = ", ".join(repr(c) for c in close) if close else "no similar name"
            lines.append(f"  {section}[{name!r}]: closest {found}")
        raise EncodingsError(
            f"{self.source or 'encodings'}: {len(unknown)} tensor name(s) match nothing in the "
            "model:\n" + "\n".join(lines),
            hint="encodings name tensors as the model does (ONNX tensor / initializer names); "
                 "rename the entries or drop them")


# -- reading -------------------------------------------------------------------------------------


@attrs.frozen
class _Channel:
    scale: float | None
    offset: int | None
    min: float | None
    max: float | None


@attrs.frozen
class _Entry:
    """One file entry, normalized across layouts but not yet interpreted."""

    where: str                      # "file: section['name']", for messages
    section: str
    name: str
    layout: str                     # "dict" or "1.0.0"
    dtype: str                      # "int" or "float"
    bitwidth: int | None
    symmetric: bool | None
    signed: bool | None             # qir's "is_signed" extension
    axis: int | None                # None: per tensor
    channels: tuple[_Channel, ...]


def load_encodings(source: str | os.PathLike | Mapping[str, Any] | Encodings, *,
                   value_names: Iterable[str] | None = None,
                   param_names: Iterable[str] | None = None,
                   path_hint: str | None = None) -> Encodings:
    """Read a QNN overrides / AIMET 0.6.1 / AIMET 1.0.0 / hand-written encodings file.

    ``source`` is a path or an already-parsed dict (``path_hint`` then names it in messages);
    an Encodings passes through (its names still checked).
    With ``value_names`` / ``param_names`` (the model's tensor and constant names), names that
    match nothing are an error (see ``Encodings.check_names``). The module docstring gives the
    conventions; entries read with offset as a zero point raise one ``EncodingsWarning``.
    """
    if isinstance(source, Encodings):
        encodings = source
    else:
        encodings = _load(source, path_hint)
    if value_names is not None or param_names is not None:
        encodings.check_names(value_names, param_names)
    return encodings


def _load(source, path_hint: str | None) -> Encodings:
    doc, label = _read_document(source, path_hint)
    _check_layout(doc, label)
    defaults = _read_defaults(doc, label)
    zero_point_entries: list[str] = []
    sections: dict[str, dict[str, QuantParams | None]] = {}
    for section in SECTIONS:
        decoded = {}
        for entry in _section_entries(doc, section, label):
            qp, convention = _decode(entry, _section_default(section, defaults))
            decoded[entry.name] = qp
            if convention == _ZERO_POINT:
                zero_point_entries.append(_describe(entry))
        sections[section] = decoded
    if zero_point_entries:
        warnings.warn(
            f"{label}: read offset as a zero point (real = scale × (q − offset)) instead of "
            f"QNN's real = scale × (q + offset) for {len(zero_point_entries)} entr"
            f"{'y' if len(zero_point_entries) == 1 else 'ies'} whose min fits only that reading: "
            + "; ".join(zero_point_entries)
            + ". Write offset = −zero_point (≤ 0), as QNN and AIMET do, to silence this.",
            EncodingsWarning, stacklevel=3)
    return Encodings(sections["activation_encodings"], sections["param_encodings"], *defaults,
                     source=label)


def _read_document(source, path_hint: str | None) -> tuple[Mapping[str, Any], str]:
    if isinstance(source, Mapping):
        return source, path_hint or "encodings"
    if not isinstance(source, (str, os.PathLike)):
        raise EncodingsError(f"encodings: expected a path or a parsed dict, got "
                             f"{type(source).__name__}")
    label = path_hint or str(source)
    try:
        text = Path(source).read_text(encoding="utf-8")
    except OSError as e:
        raise EncodingsError(f"{label}: cannot read encodings file: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise EncodingsError(f"{label}: not a UTF-8 text file ({e.reason}); expected "
                             "encodings JSON") from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise EncodingsError(f"{label}: invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}",
                             hint="encodings files are JSON; check commas, quotes and brackets") from None
    if not isinstance(doc, Mapping):
        raise EncodingsError(f"{label}: unknown encodings layout: the top level is a "
                             f"{type(doc).__name__}, not an object with activation_encodings / "
                             "param_encodings")
    return doc, label


def _read_defaults(doc: Mapping[str, Any], label: str) -> tuple[int | None, ...]:
    # AIMET 1.0.0 keeps its defaults in quantizer_args; the top level wins when both say.
    args = doc.get("quantizer_args")
    args = args if isinstance(args, Mapping) else {}
    values = []
    for key in _DEFAULT_KEYS:
        raw = doc.get(key, args.get(key))
        values.append(None if raw is None else _bitwidth(raw, f"{label}: {key}", BITWIDTHS))
    return tuple(values)


def _section_default(section: str, defaults: tuple[int | None, ...]) -> int | None:
    return defaults[0] if section == "activation_encodings" else defaults[1]


def _check_layout(doc: Mapping[str, Any], label: str) -> None:
    version = doc.get("version")
    if isinstance(version, str) and version.split(".")[0] not in ("0", "1"):
        raise EncodingsError(f"{label}: AIMET encodings version {version} is not supported",
                             hint="export the encodings as version 1.0.0 or 0.6.1")
    if not any(s in doc for s in SECTIONS):
        keys = ", ".join(map(repr, list(doc)[:8])) or "none"
        raise EncodingsError(f"{label}: unknown encodings layout: no activation_encodings or "
                             f"param_encodings (top-level keys: {keys})")


def _section_entries(doc: Mapping[str, Any], section: str, label: str) -> Iterator[_Entry]:
    content = doc.get(section)
    if content is None:
        return
    reader = next((r for kind, r in _SECTION_READERS if isinstance(content, kind)), None)
    if reader is None:
        raise EncodingsError(f"{label}: unknown encodings layout: {section} is a "
                             f"{type(content).__name__}; expected an object (QNN / AIMET 0.6.1) or "
                             "a list of records (AIMET 1.0.0)")
    yield from reader(content, section, label)


def _dict_section(content: Mapping[str, Any], section: str, label: str) -> Iterator[_Entry]:
    for name, value in content.items():
        where = f"{label}: {section}[{name!r}]"
        if isinstance(value, Mapping):
            yield _entry_from_fields(value, where, section, str(name), "dict", per_channel_dicts=None)
        elif isinstance(value, list) and value and all(isinstance(v, Mapping) for v in value):
            yield _entry_from_fields(value[0], where, section, str(name), "dict", per_channel_dicts=value)
        else:
            raise EncodingsError(f"{where}: unknown encodings layout: expected an object or a "
                                 f"non-empty list of objects (one per channel), got {value!r:.80}")


def _list_section(content: list, section: str, label: str) -> Iterator[_Entry]:
    seen: set[str] = set()
    for i, record in enumerate(content):
        if not isinstance(record, Mapping) or not isinstance(record.get("name"), str):
            raise EncodingsError(f"{label}: {section}[{i}]: unknown encodings layout: AIMET 1.0.0 "
                                 "records are objects with a string 'name'")
        name = record["name"]
        where = f"{label}: {section}[{name!r}]"
        if name in seen:
            raise EncodingsError(f"{where}: the name appears twice in {section}")
        seen.add(name)
        yield _entry_from_fields(record, where, section, name, "1.0.0", per_channel_dicts=None)


#: How each section type is read: an object (QNN / AIMET 0.6.1 / hand-written) or a list (1.0.0).
_SECTION_READERS: tuple[tuple[type, Callable[..., Iterator[_Entry]]], ...] = (
    (Mapping, _dict_section), (list, _list_section))

_ENC_TYPES = ("PER_TENSOR", "PER_CHANNEL")


def _entry_from_fields(fields: Mapping[str, Any], where: str, section: str, name: str, layout: str,
                       per_channel_dicts: list[Mapping[str, Any]] | None) -> _Entry:
    """One entry from a record (1.0.0), an object (dict layouts) or a list of per-channel objects."""
    dtype = _dtype(_first(fields, "dtype"), where)
    bitwidth = _first(fields, "bitwidth", "bw")
    bitwidth = None if bitwidth is None else _bitwidth(
        bitwidth, where, FLOAT_BITWIDTHS if dtype == "float" else BITWIDTHS)
    symmetric = _bool(_first(fields, "is_symmetric", "is_sym"), where, "is_symmetric")
    signed = _bool(fields.get("is_signed"), where, "is_signed")
    axis = fields.get("axis")
    if axis is not None and (not isinstance(axis, int) or isinstance(axis, bool) or axis < 0):
        raise EncodingsError(f"{where}: axis {axis!r} is not a non-negative integer")
    if dtype == "float":
        channels: tuple[_Channel, ...] = ()
    elif per_channel_dicts is not None:
        _check_channels_agree(per_channel_dicts, where)
        channels = tuple(_channel_of(d, f"{where} channel {i}") for i, d in enumerate(per_channel_dicts))
    else:
        channels = _channels(fields, where, scalar_only=False)
    enc_type = fields.get("enc_type")
    per_channel = axis is not None or len(channels) > 1
    if enc_type is not None:
        if enc_type not in _ENC_TYPES:
            raise EncodingsError(f"{where}: enc_type {enc_type!r} is not supported; qir reads "
                                 f"{' and '.join(_ENC_TYPES)} encodings (block-wise quantization is "
                                 "not implemented)")
        if enc_type == "PER_TENSOR" and len(channels) > 1:
            raise EncodingsError(f"{where}: enc_type PER_TENSOR with {len(channels)} scales")
        per_channel = enc_type == "PER_CHANNEL"
    if dtype == "int" and not channels:
        raise EncodingsError(f"{where}: an int encoding needs scale and offset, or min and max")
    return _Entry(where, section, name, layout, dtype, bitwidth, symmetric, signed,
                  (axis or 0) if per_channel else None, channels)


def _first(fields: Mapping[str, Any], *keys: str) -> Any:
    return next((fields[k] for k in keys if fields.get(k) is not None), None)


_CHANNEL_FIELDS = ("scale", "offset", "min", "max")
_AGREEING_FIELDS = ("dtype", "bitwidth", "is_symmetric", "is_signed", "axis")


def _check_channels_agree(dicts: list[Mapping[str, Any]], where: str) -> None:
    for key in _AGREEING_FIELDS:
        values = [d.get(key) for d in dicts]
        bad = next((i for i, v in enumerate(values) if v != values[0]), None)
        if bad is not None:
            raise EncodingsError(f"{where}: per-channel encodings disagree on {key} "
                                 f"({values[0]!r} in channel 0, {values[bad]!r} in channel {bad})")


def _channels(fields: Mapping[str, Any], where: str, scalar_only: bool) -> tuple[_Channel, ...]:
    """scale / offset / min / max, each a scalar or (unless ``scalar_only``) a per-channel list."""
    columns = {}
    for key in _CHANNEL_FIELDS:
        value = fields.get(key)
        if isinstance(value, list) and not scalar_only:
            columns[key] = value
        elif value is not None:
            columns[key] = [value]
    lengths = {key: len(values) for key, values in columns.items()}
    if len(set(lengths.values())) > 1:
        sizes = ", ".join(f"{k} {n}" for k, n in lengths.items())
        raise EncodingsError(f"{where}: per-channel lists of inconsistent length ({sizes})")
    count = next(iter(lengths.values()), 0)
    return tuple(
        _Channel(scale=_number(columns, "scale", i, where), offset=_offset(columns, i, where),
                 min=_number(columns, "min", i, where), max=_number(columns, "max", i, where))
        for i in range(count))


def _channel_of(fields: Mapping[str, Any], where: str) -> _Channel:
    found = _channels(fields, where, scalar_only=True)
    if not found:
        raise EncodingsError(f"{where}: an int encoding needs scale and offset, or min and max")
    return found[0]


def _number(columns: dict[str, list], key: str, i: int, where: str) -> float | None:
    if key not in columns:
        return None
    value = columns[key][i]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise EncodingsError(f"{where}: {key} {value!r} is not a number")
    return float(value)


def _offset(columns: dict[str, list], i: int, where: str) -> int | None:
    value = _number(columns, "offset", i, where)
    if value is None:
        return None
    if not math.isfinite(value) or value != int(value):
        raise EncodingsError(f"{where}: offset {value!r} is not an integer",
                             hint="qir's zero points are integers (AIMET's half-step zero point "
                                  "shift is not supported)")
    return int(value)


def _bitwidth(value: Any, where: str, allowed: tuple[int, ...]) -> int:
    ok = (isinstance(value, (int, float)) and not isinstance(value, bool)
          and float(value).is_integer() and int(value) in allowed)
    if not ok:
        raise EncodingsError(f"{where}: bitwidth {value!r} is not one of "
                             f"{', '.join(map(str, allowed))}")
    return int(value)


def _bool(value: Any, where: str, key: str) -> bool | None:
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise EncodingsError(f"{where}: {key} {value!r} is not true or false")


def _dtype(value: Any, where: str) -> str:
    if value is None:
        return "int"
    if isinstance(value, str) and value.lower() in ("int", "float"):
        return value.lower()
    raise EncodingsError(f"{where}: dtype {value!r} is not int or float")


# -- interpreting ----------------------------------------------------------------------------------


def _storage_range(bitwidth: int, signed: bool) -> tuple[int, int]:
    if signed:
        return -(1 << (bitwidth - 1)), (1 << (bitwidth - 1)) - 1
    return 0, (1 << bitwidth) - 1


def _decode(entry: _Entry, default_bitwidth: int | None) -> tuple[QuantParams | None, str | None]:
    """The entry's QuantParams (None: float) and the offset convention its numbers were read in."""
    if entry.dtype == "float":
        return None, None
    bitwidth = entry.bitwidth if entry.bitwidth is not None else default_bitwidth
    if bitwidth is None:
        raise EncodingsError(f"{entry.where}: no bitwidth, and the file gives no "
                             f"{'activation' if entry.section == SECTIONS[0] else 'param'}_bitwidth")
    _validate_channels(entry)
    channels = entry.channels
    has = {key: [getattr(c, key) is not None for c in channels] for key in _CHANNEL_FIELDS}
    if any(any(flags) and not all(flags) for flags in has.values()):
        raise EncodingsError(f"{entry.where}: channels give different fields; give scale, offset, "
                             "min and max the same way for every channel")
    if all(has["scale"]) != all(has["offset"]):
        raise EncodingsError(f"{entry.where}: scale and offset must be given together (or "
                             "neither, with min and max)")
    if all(has["scale"]):
        if all(has["min"]):
            zero_points, signed, convention = _detect(entry, bitwidth)
        else:
            zero_points, signed, convention = _qnn_offsets(entry, bitwidth)
        zero_points, signed = _apply_signedness(entry, bitwidth, zero_points, signed)
        scales = [c.scale for c in channels]
    elif all(has["min"]) and all(has["max"]):
        scales, zero_points, signed = _from_range(entry, bitwidth)
        convention = None
    else:
        raise EncodingsError(f"{entry.where}: an int encoding needs scale and offset, or min and max")
    return QuantParams(scales, zero_points, bitwidth, signed, entry.axis), convention


def _validate_channels(entry: _Entry) -> None:
    for i, c in enumerate(entry.channels):
        where = entry.where if len(entry.channels) == 1 else f"{entry.where} channel {i}"
        if c.scale is not None and not (math.isfinite(c.scale) and c.scale > 0):
            raise EncodingsError(f"{where}: scale {c.scale!r} must be finite and > 0")
        for key in ("min", "max"):
            value = getattr(c, key)
            if value is not None and not math.isfinite(value):
                raise EncodingsError(f"{where}: {key} {value!r} is not finite")
        if c.min is not None and c.max is not None and c.min > c.max:
            raise EncodingsError(f"{where}: min {c.min!r} > max {c.max!r}",
                                 hint="swap them, or recalibrate the tensor")


# Readings of (scale, offset) tried against min, in order: (convention, signed storage).
_READINGS = ((_QNN, False), (_ZERO_POINT, False), (_QNN, True), (_ZERO_POINT, True))


def _zero_point(convention: str, offset: int) -> int:
    return -offset if convention == _QNN else offset


def _fits(channel: _Channel, bitwidth: int, convention: str, signed: bool) -> int | None:
    """The zero point under this reading when the channel's min fits it, else None."""
    qmin, qmax = _storage_range(bitwidth, signed)
    zero_point = _zero_point(convention, channel.offset)
    if not qmin <= zero_point <= qmax:
        return None
    predicted = channel.scale * (qmin - zero_point)
    return zero_point if abs(channel.min - predicted) <= TOLERANCE_STEPS * channel.scale else None


def _detect(entry: _Entry, bitwidth: int) -> tuple[list[int], bool, str]:
    for convention, signed in _READINGS:
        zero_points = [_fits(c, bitwidth, convention, signed) for c in entry.channels]
        if all(z is not None for z in zero_points):
            return zero_points, signed, convention
    bad_index, bad = next(((i, c) for i, c in enumerate(entry.channels)
                           if all(_fits(c, bitwidth, *r) is None for r in _READINGS)),
                          (0, entry.channels[0]))
    where = entry.where if len(entry.channels) == 1 else f"{entry.where} channel {bad_index}"
    s, o = bad.scale, bad.offset
    raise EncodingsError(
        f"{where}: min {bad.min!r} fits neither QNN's real = scale × (q + offset) (min ≈ scale × "
        f"offset = {s * o:.6g}) nor offset as a zero point (min ≈ −scale × offset = {-s * o:.6g}) "
        f"with scale {s!r}, offset {o}, bitwidth {bitwidth}",
        hint="fix scale/offset/min so they agree, or give only min and max and let qir compute "
             "scale and offset")


def _qnn_offsets(entry: _Entry, bitwidth: int) -> tuple[list[int], bool, str]:
    """Without min: QNN's convention, offsets relative to the unsigned code."""
    offsets = [c.offset for c in entry.channels]
    positive = [o for o in offsets if o > 0]
    if positive:
        raise EncodingsError(
            f"{entry.where}: offset {positive[0]} > 0 without min: QNN's offsets are ≤ 0 (real = "
            "scale × (q + offset)), so qir cannot tell whether this is a zero point",
            hint="add min and max to the entry so qir can check which convention it uses, or "
                 "write offset = −zero_point")
    if (entry.layout == "dict" and entry.symmetric and entry.signed is not False
            and all(o == 0 for o in offsets)):
        return offsets, True, _QNN          # QNN's signed symmetric form: offset 0
    lowest = -((1 << bitwidth) - 1)
    if any(o < lowest for o in offsets):
        raise EncodingsError(f"{entry.where}: offset {min(offsets)} is below {lowest}, outside "
                             f"the {bitwidth}-bit range")
    return [-o for o in offsets], False, _QNN


def _apply_signedness(entry: _Entry, bitwidth: int, zero_points: list[int],
                      signed: bool) -> tuple[list[int], bool]:
    """Move to signed storage when the entry asks for it (``is_signed``, or symmetric around the
    unsigned midpoint, AIMET's signed weights), or to unsigned when ``is_signed`` is false."""
    half = 1 << (bitwidth - 1)
    wants = entry.signed
    if wants is None and entry.symmetric and not signed and all(z == half for z in zero_points):
        wants = True
    if wants is None or wants == signed:
        return zero_points, signed
    shift = -half if wants else half
    return [z + shift for z in zero_points], wants


def _from_range(entry: _Entry, bitwidth: int) -> tuple[list[float], list[int], bool]:
    """QNN's parameters from min/max alone."""
    channels = entry.channels
    if entry.symmetric:
        unsigned = entry.signed is False or (entry.signed is None and all(c.min >= 0 for c in channels))
        if unsigned:
            steps = (1 << bitwidth) - 1
            scales = [max(c.max, 0.0) / steps for c in channels]
        else:
            steps = (1 << (bitwidth - 1)) - 1
            scales = [max(-c.min, c.max) / steps for c in channels]
        scales = [s if s > 0 else 1e-8 for s in scales]       # an all-zero range stays representable
        return scales, [0] * len(channels), not unsigned
    params = [activation_params(c.min, c.max, bitwidth, signed=bool(entry.signed)) for c in channels]
    return [p.scale[0] for p in params], [p.zero_point[0] for p in params], bool(entry.signed)


def _describe(entry: _Entry) -> str:
    c = entry.channels[0]
    more = f", {len(entry.channels)} channels" if len(entry.channels) > 1 else ""
    return f"{entry.section}[{entry.name!r}] (offset {c.offset}, min {c.min!r}, scale {c.scale!r}{more})"


# -- writing ---------------------------------------------------------------------------------------


def encodings_of(graph: Graph, *, include_float: bool = False) -> Encodings:
    """The Encodings of a quantized graph.

    Every Value whose TensorType has ``.quant`` is listed: graph inputs and node outputs (of
    subgraphs too) as activations, constants as params. With ``include_float`` and at least one
    quantized tensor, float activations without ``.quant`` are listed as float (None), as QNN's
    float fallback entries; float constants (e.g. the scales of quantize ops) never are.
    """
    activations: dict[str, QuantParams | None] = {}
    params: dict[str, QuantParams | None] = {}
    for value in _tensor_values(graph):
        if isinstance(value.type, TensorType) and value.type.quant is not None:
            (params if value.is_constant else activations)[value.name] = value.type.quant
    if include_float and (activations or params):
        activations.update((value.name, None) for value in _float_activations(graph))
    return Encodings(activations, params, *_uniform_bitwidths(activations, params),
                     source=graph.name)


def _float_activations(graph: Graph) -> Iterator[Value]:
    for value in _tensor_values(graph):
        t = value.type
        if (isinstance(t, TensorType) and t.quant is None and t.dtype.is_float
                and not value.is_constant):
            yield value


def _float_bitwidth(value: Value) -> int:
    return 16 if value.type.dtype in (DType.FLOAT16, DType.BFLOAT16) else 32


def _tensor_values(graph: Graph) -> Iterator[Value]:
    yield from graph.inputs
    for node in graph.nodes:
        yield from node.outputs
        for sub in node.subgraphs():
            yield from _tensor_values(sub)
    yield from graph.constants.values()


def _uniform_bitwidths(activations, params) -> tuple[int | None, int | None, int | None]:
    def uniform(qps):
        widths = {qp.bitwidth for qp in qps if qp is not None}
        return widths.pop() if len(widths) == 1 else None

    biases = [qp for qp in params.values() if qp is not None and qp.bitwidth == 32]
    weights = [qp for qp in params.values() if qp is not None and qp.bitwidth != 32]
    return uniform(activations.values()), uniform(weights), uniform(biases)


def dump_encodings(graph: Graph | Encodings, path: str | os.PathLike | None = None, *,
                   layout: str = "aimet-0.6.1", include_float: bool = False) -> dict:
    """The encodings of a quantized graph (or of an Encodings) as a JSON-ready dict.

    ``layout`` is ``"aimet-0.6.1"`` (also what QNN's ``--quantization_overrides`` reads) or
    ``"aimet-1.0.0"``. With ``path`` the file is written atomically (temp file + rename). This is
    the ``quantization_config.json`` of compiled artifacts. ``include_float``: see
    ``encodings_of``; float entries get bitwidth 16 for float16 tensors, else 32 (on reading,
    a float entry's bitwidth is checked, not kept: the tensor keeps the model's float type).
    """
    if layout not in _WRITERS:
        raise EncodingsError(f"encodings layout {layout!r}: expected one of {', '.join(LAYOUTS)}")
    if isinstance(graph, Encodings):
        encodings, float_bits = graph, {}
    else:
        encodings = encodings_of(graph, include_float=include_float)
        float_bits = {v.name: _float_bitwidth(v) for v in _float_activations(graph)}
    doc = _WRITERS[layout](encodings, float_bits)
    for key, value in zip(_DEFAULT_KEYS, (encodings.activation_bitwidth, encodings.param_bitwidth,
                                          encodings.bias_bitwidth)):
        if value is not None:
            doc[key] = value
    if path is not None:
        _write_atomic(Path(path), doc)
    return doc


def _file_channels(qp: QuantParams) -> list[dict[str, Any]]:
    """Per channel: AIMET's offset (relative to the unsigned code), min, max and scale."""
    qmin, qmax = _storage_range(qp.bitwidth, qp.signed)
    shift = (1 << (qp.bitwidth - 1)) if qp.signed else 0
    return [{"max": s * (qmax - z), "min": s * (qmin - z), "offset": -(z + shift), "scale": s}
            for s, z in zip(qp.scale, qp.zero_point)]


def _is_symmetric(qp: QuantParams) -> bool:
    return qp.signed and all(z == 0 for z in qp.zero_point)


def _extensions(qp: QuantParams) -> dict[str, Any]:
    extra: dict[str, Any] = {}
    if qp.axis is not None:
        extra["axis"] = qp.axis
    if qp.signed and not _is_symmetric(qp):
        extra["is_signed"] = True
    return extra


def _write_061(encodings: Encodings, float_bits: Mapping[str, int]) -> dict:
    def entry(name: str, qp: QuantParams | None) -> list[dict[str, Any]]:
        if qp is None:
            return [{"bitwidth": float_bits.get(name, 32), "dtype": "float"}]
        common = {"bitwidth": qp.bitwidth, "dtype": "int",
                  "is_symmetric": str(_is_symmetric(qp)), **_extensions(qp)}
        return [{**common, **channel} for channel in _file_channels(qp)]

    return {"version": "0.6.1",
            "activation_encodings": {n: entry(n, qp) for n, qp in encodings.activations.items()},
            "param_encodings": {n: entry(n, qp) for n, qp in encodings.params.items()}}


def _write_100(encodings: Encodings, float_bits: Mapping[str, int]) -> dict:
    def record(name: str, qp: QuantParams | None) -> dict[str, Any]:
        if qp is None:
            return {"name": name, "dtype": "FLOAT", "enc_type": "PER_TENSOR",
                    "bw": float_bits.get(name, 32)}
        channels = _file_channels(qp)
        return {"name": name, "dtype": "INT",
                "enc_type": "PER_TENSOR" if qp.axis is None else "PER_CHANNEL",
                "bw": qp.bitwidth, "is_sym": _is_symmetric(qp),
                "scale": [c["scale"] for c in channels], "offset": [c["offset"] for c in channels],
                **_extensions(qp)}

    return {"version": "1.0.0",
            "activation_encodings": [record(n, qp) for n, qp in encodings.activations.items()],
            "param_encodings": [record(n, qp) for n, qp in encodings.params.items()]}


_WRITERS: dict[str, Callable[[Encodings, Mapping[str, int]], dict]] = {
    "aimet-0.6.1": _write_061, "aimet-1.0.0": _write_100}


def _write_atomic(path: Path, doc: dict) -> None:
    """Write the JSON atomically: readers never see half a file."""
    try:
        text = json.dumps(doc, indent=2, allow_nan=False) + "\n"
    except ValueError as e:
        raise EncodingsError(f"{path}: encodings hold a value JSON cannot store ({e})") from None
    write_atomic(path, text.encode("utf-8"))
