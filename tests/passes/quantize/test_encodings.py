"""Encodings JSON in and out: the layouts QNN / AIMET write, the offset-convention trap, bad
files, and round trips (load ∘ dump and dump ∘ load).

Expected numbers come from the formats' own definitions (AIMET's encoding specification and
exporters: real = scale × (q + offset) over the unsigned code), computed by hand in each test.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qir.errors import QirError
from qir.ir.graph import Graph
from qir.ir.types import DType, QuantParams, TensorType
from qir.passes.quantize.encodings import (BITWIDTHS, LAYOUTS, Encodings, EncodingsError,
                                          EncodingsWarning, dump_encodings, encodings_of,
                                          load_encodings)

HAND_WRITTEN = {
    "activation_encodings": {"conv1/Relu:0": {"bitwidth": 8, "max": 6.0, "min": 0.0,
                                              "scale": 0.023529, "offset": 0}},
    "param_encodings": {"conv1.weight": {"bitwidth": 8, "max": 2.5, "min": -2.5,
                                         "scale": 0.019608, "offset": 127}},
    "activation_bitwidth": 8, "param_bitwidth": 8, "bias_bitwidth": 32,
}


def _write(tmp_path, name, doc) -> str:
    path = tmp_path / name
    path.write_text(json.dumps(doc) if not isinstance(doc, str) else doc)
    return str(path)


def _load_quietly(source, **kw):
    """load_encodings with warnings turned into errors: the file must need no guessing."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", EncodingsWarning)
        return load_encodings(source, **kw)


# -- the hand-written form and its zero-point trap -------------------------------------------------


def test_hand_written_example_loads_with_zero_point_warning(tmp_path):
    path = _write(tmp_path, "enc.json", HAND_WRITTEN)
    with pytest.warns(EncodingsWarning, match="zero point") as record:
        enc = load_encodings(path)
    message = str(record[0].message)
    assert "conv1.weight" in message and "conv1/Relu:0" not in message and path in message
    act, weight = enc.activations["conv1/Relu:0"], enc.params["conv1.weight"]
    assert act == QuantParams(0.023529, 0, 8, False, None)
    # offset 127 read as a zero point: q = 0 is −2.49 ≈ min, q = 255 is 2.51 ≈ max.
    assert weight == QuantParams(0.019608, 127, 8, False, None)
    assert abs(0.019608 * (0 - 127) - (-2.5)) < 0.019608
    assert abs(0.019608 * (255 - 127) - 2.5) < 0.019608
    assert (enc.activation_bitwidth, enc.param_bitwidth, enc.bias_bitwidth) == (8, 8, 32)
    assert enc.source == path


def test_qnn_offsets_need_no_warning():
    doc = {"param_encodings": {"w": {"bitwidth": 8, "max": 2.509824, "min": -2.490216,
                                     "scale": 0.019608, "offset": -127}}}
    assert _load_quietly(doc).params["w"] == QuantParams(0.019608, 127, 8, False, None)


def test_signed_symmetric_forms():
    """QNN's signed form (offset 0, min ≈ −128·scale) and AIMET's (offset −128) are the same
    tensor: int8, zero point 0. Without min, offset 0 + symmetric means signed in the dict
    layouts and unsigned symmetric in 1.0.0 files (AIMET writes −128 for signed)."""
    signed = QuantParams(0.01, 0, 8, True, None)
    entry = {"bitwidth": 8, "is_symmetric": "True", "scale": 0.01}
    assert _load_quietly({"param_encodings": {"w": {**entry, "offset": 0, "min": -1.28, "max": 1.27}}}
                         ).params["w"] == signed
    assert _load_quietly({"param_encodings": {"w": {**entry, "offset": -128, "min": -1.28, "max": 1.27}}}
                         ).params["w"] == signed
    assert _load_quietly({"param_encodings": {"w": {**entry, "offset": 0}}}).params["w"] == signed
    assert _load_quietly({"param_encodings": {"w": {**entry, "offset": -128}}}).params["w"] == signed
    v1 = {"version": "1.0.0", "param_encodings": [
        {"name": "w", "dtype": "INT", "enc_type": "PER_TENSOR", "bw": 8, "is_sym": True,
         "scale": [0.01], "offset": [-128]},
        {"name": "r", "dtype": "INT", "enc_type": "PER_TENSOR", "bw": 8, "is_sym": True,
         "scale": [0.01], "offset": [0]}]}
    enc = _load_quietly(v1)
    assert enc.params == {"w": signed, "r": QuantParams(0.01, 0, 8, False, None)}
    # Unsigned symmetric with min/max (a ReLU output): min 0 fits the unsigned reading.
    relu = {"bitwidth": 8, "is_symmetric": "True", "scale": 0.01, "offset": 0, "min": 0.0, "max": 2.55}
    assert _load_quietly({"activation_encodings": {"r": relu}}).activations["r"] == \
        QuantParams(0.01, 0, 8, False, None)


def test_min_max_only_gets_qnn_parameters():
    enc = _load_quietly({"activation_encodings": {
        "a": {"bitwidth": 8, "min": -1.0, "max": 3.0},
        "p": {"bitwidth": 8, "min": 0.5, "max": 2.0},                 # widened to contain 0
        "s": {"bitwidth": 8, "is_symmetric": "True", "min": -0.5, "max": 2.54},
        "u": {"bitwidth": 16, "is_symmetric": True, "min": 0.0, "max": 6.5535}}})
    # (max − min) / (2^8 − 1), as a float32 number (the precision every format stores)
    scale = float(np.float32(4.0 / 255))
    assert enc.activations["a"] == QuantParams(scale, round(1.0 / scale), 8, False, None)
    assert enc.activations["a"].zero_point == (64,)
    assert enc.activations["p"] == QuantParams(float(np.float32(2.0 / 255)), 0, 8, False, None)
    assert enc.activations["s"].zero_point == (0,) and enc.activations["s"].signed
    assert enc.activations["s"].scale[0] == pytest.approx(2.54 / 127)
    assert enc.activations["u"].scale[0] == pytest.approx(6.5535 / 65535)
    assert not enc.activations["u"].signed


def test_float_entries_stay_float():
    enc = _load_quietly({"activation_encodings": {"sm": [{"bitwidth": 16, "dtype": "float"}]},
                         "param_encodings": [{"name": "w", "dtype": "FLOAT", "enc_type": "PER_TENSOR",
                                              "bw": 32}]})
    assert enc.activations == {"sm": None} and enc.params == {"w": None}


def test_entry_without_bitwidth_takes_the_file_default():
    enc = _load_quietly({"activation_bitwidth": 16,
                         "activation_encodings": {"a": {"scale": 0.5, "offset": -3}}})
    assert enc.activations["a"] == QuantParams(0.5, 3, 16, False, None)


# -- AIMET 0.6.1 and 1.0.0 ---------------------------------------------------------------------------

W_SCALES = [0.0004936049808748066, 0.00031, 0.0011427081098743512]
B_SCALES = [1e-6, 2e-6, 3e-6]

AIMET_061 = {
    "version": "0.6.1",
    "activation_encodings": {
        # From AIMET's encoding specification (PyTorch example, tensor "20").
        "20": [{"bitwidth": 8, "dtype": "int", "is_symmetric": "False", "max": 2.6086959838867188,
                "min": -2.109158515930176, "offset": -114.0, "scale": 0.018501389771699905}],
        "input": [{"bitwidth": 16, "dtype": "int", "is_symmetric": "False", "max": 1.0,
                   "min": -1.0, "offset": -32768, "scale": 2.0 / 65535}],
        "softmax": [{"bitwidth": 16, "dtype": "float"}],
    },
    "param_encodings": {
        "conv2.weight": [{"bitwidth": 8, "dtype": "int", "is_symmetric": "True", "max": s * 127,
                          "min": s * -128, "offset": -128, "scale": s} for s in W_SCALES],
        "conv2.bias": [{"bitwidth": 32, "dtype": "int", "is_symmetric": "True",
                        "max": s * (2**31 - 1), "min": s * -(2**31), "offset": -(2**31), "scale": s}
                       for s in B_SCALES],
    },
}

AIMET_100 = {
    "version": "1.0.0",
    "activation_encodings": [
        {"name": "20", "dtype": "INT", "enc_type": "PER_TENSOR", "bw": 8, "is_sym": False,
         "scale": [0.018501389771699905], "offset": [-114]},
        {"name": "input", "dtype": "INT", "enc_type": "PER_TENSOR", "bw": 16, "is_sym": False,
         "scale": [2.0 / 65535], "offset": [-32768]},
        {"name": "softmax", "dtype": "FLOAT", "enc_type": "PER_TENSOR", "bw": 16},
    ],
    "param_encodings": [
        {"name": "conv2.weight", "dtype": "INT", "enc_type": "PER_CHANNEL", "bw": 8, "is_sym": True,
         "scale": W_SCALES, "offset": [-128] * 3},
        {"name": "conv2.bias", "dtype": "INT", "enc_type": "PER_CHANNEL", "bw": 32, "is_sym": True,
         "scale": B_SCALES, "offset": [-(2**31)] * 3},
    ],
    "quantizer_args": {"activation_bitwidth": 8, "param_bitwidth": 8, "dtype": "int"},
}


def test_aimet_061_and_100_load_to_the_same_encodings(tmp_path):
    old = _load_quietly(_write(tmp_path, "model.encodings", AIMET_061))
    new = _load_quietly(_write(tmp_path, "model_v1.encodings", AIMET_100))
    assert old.activations == new.activations and old.params == new.params
    assert old.activations == {
        "20": QuantParams(0.018501389771699905, 114, 8, False, None),
        "input": QuantParams(2.0 / 65535, 32768, 16, False, None),
        "softmax": None}
    assert old.params == {"conv2.weight": QuantParams(W_SCALES, [0, 0, 0], 8, True, 0),
                          "conv2.bias": QuantParams(B_SCALES, [0, 0, 0], 32, True, 0)}
    assert (new.activation_bitwidth, new.param_bitwidth) == (8, 8)     # from quantizer_args


def test_names_are_checked_against_the_model():
    names = dict(value_names=["20", "input", "softmax"], param_names=["conv2.weight", "conv2.bias"])
    _load_quietly(AIMET_061, **names)
    doc = {"activation_encodings": {"conv1/Relu:0": {"bitwidth": 8, "scale": 0.1, "offset": 0}},
           "param_encodings": {"conv1.weigth": {"bitwidth": 8, "scale": 0.1, "offset": -128,
                                                "is_symmetric": "True"},
                               "zzz": {"bitwidth": 8, "scale": 0.1, "offset": 0}}}
    with pytest.raises(EncodingsError) as info:
        load_encodings(doc, path_hint="over.json", value_names=["/conv1/Relu_output_0", "input"],
                       param_names=["conv1.weight"])
    message = str(info.value)
    assert "over.json" in message and "3 tensor name" in message
    assert "'conv1/Relu:0'" in message and "'/conv1/Relu_output_0'" in message
    assert "'conv1.weigth'" in message and "'conv1.weight'" in message
    assert "'zzz'" in message and "no similar name" in message
    # An already-loaded Encodings passes through, its names still checked.
    loaded = _load_quietly(AIMET_061)
    assert load_encodings(loaded, **names) is loaded
    with pytest.raises(EncodingsError, match=r"'conv2\.bias'\]: closest 'conv2\.weight'"):
        load_encodings(loaded, value_names=names["value_names"], param_names=["conv2.weight"])


# -- bad input -----------------------------------------------------------------------------------------


def _entry(**fields):
    return {"param_encodings": {"conv1.weight": {"bitwidth": 8, "scale": 0.01, "offset": -128,
                                                 "min": -1.28, "max": 1.27, **fields}}}


@pytest.mark.parametrize("doc, pattern", [
    (_entry(bitwidth=7), r"conv1\.weight.*bitwidth 7 is not one of 4, 8, 16, 32"),
    (_entry(bitwidth="8"), r"bitwidth '8'"),
    (_entry(min=2.0, max=1.0), r"conv1\.weight.*min 2\.0 > max 1\.0"),
    (_entry(scale=0.0), r"scale 0\.0 must be finite and > 0"),
    (_entry(scale=-1.0), r"scale -1\.0 must be finite"),
    (_entry(scale=float("nan")), r"scale nan must be finite"),
    (_entry(scale=0.0078, offset=50, min=-1.0, max=1.0),
     r"conv1\.weight'\]: min -1\.0 fits neither QNN's.*scale 0\.0078, offset 50"),
    (_entry(offset=1.5), r"offset 1\.5 is not an integer"),
    (_entry(is_symmetric="maybe"), r"is_symmetric 'maybe'"),
    ({"param_encodings": {"w": {"bitwidth": 8, "scale": 0.01, "offset": 127}}},
     r"'w'.*offset 127 > 0 without min"),
    ({"param_encodings": {"w": {"bitwidth": 8, "scale": 0.01}}}, r"scale and offset must be given together"),
    ({"param_encodings": {"w": {"bitwidth": 8, "min": -1.0}}}, r"needs scale and offset, or min and max"),
    ({"param_encodings": {"w": {"bitwidth": 8, "scale": [0.1, 0.2], "offset": [0]}}},
     r"per-channel lists of inconsistent length \(scale 2, offset 1\)"),
    ({"param_encodings": [{"name": "w", "dtype": "INT", "enc_type": "PER_CHANNEL", "bw": 8,
                           "is_sym": True, "scale": [0.1, 0.2, 0.3], "offset": [-128, -128]}]},
     r"\['w'\]: per-channel lists of inconsistent length"),
    ({"param_encodings": {"w": [{"bitwidth": 8, "scale": 0.1, "offset": 0},
                                {"bitwidth": 4, "scale": 0.1, "offset": 0}]}},
     r"per-channel encodings disagree on bitwidth \(8 in channel 0, 4 in channel 1\)"),
    ({"param_encodings": [{"name": "w", "dtype": "INT", "enc_type": "LPBQ", "bw": 4, "is_sym": True,
                           "scale": [0.1], "offset": [-8]}]}, r"enc_type 'LPBQ' is not supported"),
    ({"param_encodings": [{"name": "w", "dtype": "INT", "enc_type": "PER_TENSOR", "bw": 8,
                           "scale": [0.1, 0.2], "offset": [0, 0]}]}, r"PER_TENSOR with 2 scales"),
    ({"param_encodings": [{"name": "w", "dtype": "INT", "enc_type": "PER_TENSOR", "bw": 8,
                           "scale": [0.1], "offset": [0]}] * 2}, r"appears twice"),
    ({"param_encodings": [{"dtype": "INT", "bw": 8}]}, r"param_encodings\[0\].*'name'"),
    ({"activation_encodings": {"a": [{"bitwidth": 8, "dtype": "float"}]}},
     r"bitwidth 8 is not one of 16, 32"),
    ({"activation_encodings": {"a": {"bitwidth": 8, "dtype": "bfloat"}}}, r"dtype 'bfloat'"),
    ({"activation_encodings": {"a": {"scale": 0.1, "offset": 0}}}, r"no bitwidth"),
    ({"activation_encodings": {"a": 0.5}}, r"unknown encodings layout"),
    ({"activation_encodings": 5}, r"unknown encodings layout: activation_encodings is a int"),
    ({"encodings": []}, r"unknown encodings layout: no activation_encodings.*'encodings'"),
    ({"version": "2.0.0", "encodings": []}, r"version 2\.0\.0 is not supported"),
    ({"activation_bitwidth": 7, "activation_encodings": {}}, r"activation_bitwidth: bitwidth 7"),
])
def test_bad_entries_are_refused_naming_file_and_entry(doc, pattern):
    with pytest.raises(EncodingsError, match=pattern) as info:
        load_encodings(doc, path_hint="bad.encodings")
    assert str(info.value).startswith("bad.encodings")
    assert isinstance(info.value, QirError)


def test_bad_files_name_the_file(tmp_path):
    broken = _write(tmp_path, "broken.json", '{"activation_encodings": {"a": [}')
    with pytest.raises(EncodingsError, match=r"broken\.json: invalid JSON at line 1"):
        load_encodings(broken)
    with pytest.raises(EncodingsError, match=r"missing\.json: cannot read"):
        load_encodings(tmp_path / "missing.json")
    top_list = _write(tmp_path, "list.json", "[1, 2]")
    with pytest.raises(EncodingsError, match=r"list\.json: unknown encodings layout"):
        load_encodings(top_list)


# -- dump --------------------------------------------------------------------------------------------


def _quantized_graph() -> Graph:
    """x (u8) + w (s8 per-channel) -> add (u8) -> relu (u8) -> out (f32), bias b (s32)."""
    g = Graph("tiny")
    x = g.add_input("x", TensorType(DType.UINT8, (1, 4), quant=QuantParams(0.5, 10, 8, False)))
    w = g.add_constant(np.array([1, -2, 3, -4], np.int8), "w",
                       TensorType(DType.INT8, (4,), quant=QuantParams([0.1, 0.2, 0.3, 0.4], [0] * 4,
                                                                      8, True, 0)))
    b = g.add_constant(np.array([5, 6, 7, 8], np.int32), "b",
                       TensorType(DType.INT32, (4,), quant=QuantParams([0.05] * 4, [0] * 4, 32, True, 0)))
    g.add_constant(np.array(0.125, np.float32), "out_scale")            # float: not listed
    add = g.add_node("elementwise.add", [x, w], name="add_node", output_names=["add"],
                     output_types=[TensorType(DType.UINT8, (1, 4), quant=QuantParams(0.25, 3, 8, False))])
    add2 = g.add_node("elementwise.add", [add.output, b], name="add2_node", output_names=["add2"],
                      output_types=[TensorType(DType.INT8, (1, 4), quant=QuantParams(0.5, -7, 8, True))])
    relu = g.add_node("nn.relu", [add2.output], name="relu_node", output_names=["relu"],
                      output_types=[TensorType(DType.UINT8, (1, 4), quant=QuantParams(0.125, 0, 8, False))])
    out = g.add_node("nn.relu", [relu.output], name="out_node", output_names=["out"],
                     output_types=[TensorType(DType.FLOAT32, (1, 4))])
    g.outputs = [out.output]
    return g


def _aimet(bitwidth, scale, offset, lo, hi, symmetric=False, **extra):
    return {"bitwidth": bitwidth, "dtype": "int", "is_symmetric": str(symmetric), "max": hi,
            "min": lo, "offset": offset, "scale": scale, **extra}


def test_dump_lists_every_quantized_tensor(tmp_path):
    g = _quantized_graph()
    path = tmp_path / "quantization_config.json"
    doc = dump_encodings(g, path)
    assert json.loads(path.read_text()) == doc
    assert [p.name for p in tmp_path.iterdir()] == ["quantization_config.json"]   # no temp left
    half = 2**31
    assert doc == {
        "version": "0.6.1",
        "activation_encodings": {
            "x": [_aimet(8, 0.5, -10, -5.0, 122.5)],              # 0.5 × (0 − 10), 0.5 × (255 − 10)
            "add": [_aimet(8, 0.25, -3, -0.75, 63.0)],
            # signed, zero point −7: AIMET's offset is −(−7 + 128) = −121 over the unsigned code.
            "add2": [_aimet(8, 0.5, -121, 0.5 * (-128 + 7), 0.5 * (127 + 7), is_signed=True)],
            "relu": [_aimet(8, 0.125, 0, 0.0, 31.875)],
        },
        "param_encodings": {
            "w": [_aimet(8, s, -128, s * -128, s * 127, True, axis=0) for s in (0.1, 0.2, 0.3, 0.4)],
            "b": [_aimet(32, 0.05, -half, 0.05 * -half, 0.05 * (half - 1), True, axis=0)] * 4,
        },
        "activation_bitwidth": 8, "param_bitwidth": 8, "bias_bitwidth": 32,
    }


@pytest.mark.parametrize("layout", LAYOUTS)
def test_load_of_dump_gives_the_graphs_quant_params(layout):
    g = _quantized_graph()
    back = _load_quietly(dump_encodings(g, layout=layout),
                         value_names=[v.name for v in g.inputs] + [n.output.name for n in g.nodes],
                         param_names=list(g.constants))
    expected = {v.name: v.type.quant for v in [*g.inputs, *(n.output for n in g.nodes)]
                if v.type.quant is not None}
    assert back.activations == expected
    assert back.params == {"w": g.constants["w"].type.quant, "b": g.constants["b"].type.quant}
    assert back == encodings_of(g)


def test_dump_float_entries_on_request():
    g = _quantized_graph()
    doc = dump_encodings(g, include_float=True)
    assert doc["activation_encodings"]["out"] == [{"bitwidth": 32, "dtype": "float"}]
    assert "out_scale" not in doc["param_encodings"]
    v1 = dump_encodings(g, layout="aimet-1.0.0", include_float=True)
    assert {"name": "out", "dtype": "FLOAT", "enc_type": "PER_TENSOR", "bw": 32} in v1["activation_encodings"]
    assert _load_quietly(v1).activations["out"] is None
    # A float graph has nothing to list, float or not.
    f = Graph("float")
    x = f.add_input("x", TensorType(DType.FLOAT32, (2,)))
    f.outputs = [f.add_node("nn.relu", [x]).output]
    assert dump_encodings(f, include_float=True) == {"version": "0.6.1", "activation_encodings": {},
                                                     "param_encodings": {}}


def test_dump_refuses_unknown_layout():
    with pytest.raises(EncodingsError, match="aimet-0.6.1, aimet-1.0.0"):
        dump_encodings(Encodings(), layout="aimet-2.0.0")


# -- round trips ---------------------------------------------------------------------------------------


@st.composite
def quant_params(draw):
    bitwidth = draw(st.sampled_from(BITWIDTHS))
    signed = draw(st.booleans())
    lo, hi = (-(1 << (bitwidth - 1)), (1 << (bitwidth - 1)) - 1) if signed else (0, (1 << bitwidth) - 1)
    axis = draw(st.none() | st.integers(0, 3))
    n = 1 if axis is None else draw(st.integers(1, 4))
    scales = draw(st.lists(st.floats(1e-7, 1e3), min_size=n, max_size=n))
    special = st.sampled_from(sorted(z for z in {lo, hi, 0, 1 << (bitwidth - 1), lo + 1} if lo <= z <= hi))
    zero_point = special | st.integers(lo, hi)
    if draw(st.booleans()):
        zero_points = [draw(zero_point)] * n
    else:
        zero_points = draw(st.lists(zero_point, min_size=n, max_size=n))
    return QuantParams(scales, zero_points, bitwidth, signed, axis)


names = st.from_regex(r"[A-Za-z0-9_./:\-]{1,16}", fullmatch=True)
bitwidth_defaults = st.none() | st.sampled_from(BITWIDTHS)
encodings = st.builds(
    Encodings,
    st.dictionaries(names, st.none() | quant_params(), max_size=4),
    st.dictionaries(names, st.none() | quant_params(), max_size=4),
    bitwidth_defaults, bitwidth_defaults, bitwidth_defaults)

ROUND_TRIP = settings(max_examples=150, deadline=None)


@ROUND_TRIP
@given(encodings, st.sampled_from(LAYOUTS))
def test_load_of_dump_is_identity(enc, layout):
    doc = dump_encodings(enc, layout=layout)
    back = _load_quietly(json.loads(json.dumps(doc)))
    assert back == enc
    assert dump_encodings(back, layout=layout) == doc
    # And across layouts: a 0.6.1 file converted to 1.0.0 reads back the same.
    other = LAYOUTS[1 - LAYOUTS.index(layout)]
    assert _load_quietly(dump_encodings(back, layout=other)) == enc


@st.composite
def hand_written_entries(draw):
    """Unsigned entries as people write them: offset in QNN's convention or as a zero point,
    min/max within half a step of the grid ends, per tensor or per channel (lists)."""
    bitwidth = draw(st.sampled_from((4, 8, 16)))
    qmax = (1 << bitwidth) - 1
    n = draw(st.integers(1, 3))
    scales = draw(st.lists(st.floats(1e-4, 10.0), min_size=n, max_size=n))
    zero_points = draw(st.lists(st.integers(0, qmax), min_size=n, max_size=n))
    as_zero_point = draw(st.booleans())
    jitter = draw(st.lists(st.floats(-0.5, 0.5), min_size=2 * n, max_size=2 * n))
    entry = {"bitwidth": bitwidth,
             "scale": scales, "offset": [z if as_zero_point else -z for z in zero_points],
             "min": [s * (0 - z + j) for s, z, j in zip(scales, zero_points, jitter)],
             "max": [s * (qmax - z + j) for s, z, j in zip(scales, zero_points, jitter[n:])]}
    if n == 1:
        entry = {k: v[0] if isinstance(v, list) else v for k, v in entry.items()}
    return entry, QuantParams(scales, zero_points, bitwidth, False, None if n == 1 else 0)


@ROUND_TRIP
@given(st.dictionaries(names, hand_written_entries(), min_size=1, max_size=3), st.sampled_from(LAYOUTS))
def test_dump_of_load_of_hand_written_files_is_identity(entries, layout):
    doc = {"param_encodings": {name: entry for name, (entry, _) in entries.items()}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", EncodingsWarning)     # zero-point entries warn, by design
        first = load_encodings(doc)
    assert first.params == {name: qp for name, (_, qp) in entries.items()}
    again = _load_quietly(dump_encodings(first, layout=layout))
    assert again == first
