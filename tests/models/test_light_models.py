"""The nine real CNNs the onnx wheel ships (onnx/backend/test/data/light) run through qir.

Each model must match the reference output stored beside it, at the tolerances of the official
suite (onnx/backend/test/data/real/test_<name>/data.json), on the input the official runner feeds
it (``arange(n) / n`` in the input's shape). Most of those reference outputs are near-uniform
softmax outputs that almost any finite computation matches, so the tensor feeding the final
Softmax is also compared with onnxruntime's (rtol 1e-3, atol 1e-4), captured with the reference
interpreter's hook. densenet121 has no final Softmax: its output itself is compared.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

import qir
from qir.errors import UnsupportedOpError
from qir.ir.interpreter import Interpreter

DATA = Path(onnx.__file__).parent / "backend" / "test" / "data"
LIGHT, REAL = DATA / "light", DATA / "real"
PRE_SOFTMAX_RTOL, PRE_SOFTMAX_ATOL = 1e-3, 1e-4


def light_models() -> list[dict]:
    """name, model path, reference output paths and tolerances of each light model."""
    found = []
    for folder in sorted(REAL.glob("test_*")):
        info = json.loads((folder / "data.json").read_text())
        path = DATA.parents[3] / info["url"]
        if not info.get("url", "").startswith("onnx/backend/test/data/light/") or not path.is_file():
            continue
        outputs = sorted(LIGHT.glob(f"{path.stem}_output_*.pb"), key=lambda p: int(p.stem.rsplit("_", 1)[1]))
        found.append({"name": info["model_name"], "path": path, "outputs": outputs,
                      "rtol": info.get("rtol", 1e-3), "atol": info.get("atol", 1e-7)})
    return found


MODELS = light_models()


def official_inputs(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """The inputs onnx's runner generates for light models (generate_dummy_data, random=False)."""
    inits = {t.name for t in model.graph.initializer}
    feeds = {}
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        shape = tuple(d.dim_value if d.HasField("dim_value") else 1 for d in vi.type.tensor_type.shape.dim)
        n = int(np.prod(shape))
        feeds[vi.name] = (np.arange(n).reshape(shape) / n).astype(np.float32)
    return feeds


def final_softmax_input(model: onnx.ModelProto) -> str | None:
    """The name of the tensor feeding the Softmax that produces a graph output (None if none)."""
    outputs = {o.name for o in model.graph.output}
    for node in reversed(model.graph.node):
        if node.op_type == "Softmax" and node.output[0] in outputs:
            return node.input[0]
    return None


def onnxruntime_values(model: onnx.ModelProto, feeds: dict, names: list[str]) -> dict[str, np.ndarray]:
    """Values of ``names`` (graph outputs or intermediate tensors) computed by onnxruntime."""
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    present = {o.name for o in probe.graph.output}
    probe.graph.output.extend(helper.make_empty_tensor_value_info(n) for n in names if n not in present)
    sess = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    return dict(zip(names, sess.run(list(names), feeds)))


@pytest.mark.slow
@pytest.mark.parametrize("case", MODELS, ids=[m["name"] for m in MODELS])
def test_light_model(case):
    path = case["path"]
    model = onnx.load(str(path))
    feeds = official_inputs(model)
    try:
        compiled = qir.compile(str(path), target="reference")
    except UnsupportedOpError as exc:
        pytest.skip(f"qir does not support every op of {case['name']} yet: {exc.message.splitlines()[0]}")

    # 1. The reference outputs, at the official suite's tolerances.
    outs = compiled.run(feeds)
    expected = [numpy_helper.to_array(onnx.load_tensor(str(p))) for p in case["outputs"]]
    assert list(outs) == [o.name for o in model.graph.output]
    for got, want in zip(outs.values(), expected):
        assert got.shape == want.shape and got.dtype == want.dtype
        np.testing.assert_allclose(got, want, rtol=case["rtol"], atol=case["atol"])

    # 2. The tensor feeding the final Softmax (or the output itself when there is none),
    #    captured with the reference interpreter's hook, against onnxruntime's.
    probe = final_softmax_input(model) or model.graph.output[0].name
    graph = qir.load_onnx(str(path))
    captured: dict[str, np.ndarray] = {}

    def hook(value, array):
        if value.name == probe:
            captured[probe] = np.array(array, copy=True)

    Interpreter(graph, hook).run(feeds)
    assert probe in captured, f"no qir value is named {probe!r}"
    theirs = onnxruntime_values(model, feeds, [probe])[probe]
    ours = captured[probe]
    assert ours.shape == theirs.shape
    # The light models' weights are constants (ConstantOfShape), so every class gets the same
    # logit; its magnitude (1e0..1e31) still checks the whole computation, as long as it is not ~0.
    assert np.abs(theirs).max() > 100 * PRE_SOFTMAX_ATOL, f"{probe} is ~0: the comparison is vacuous"
    np.testing.assert_allclose(ours, theirs, rtol=PRE_SOFTMAX_RTOL, atol=PRE_SOFTMAX_ATOL)
