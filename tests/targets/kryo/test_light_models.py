"""The nine light models of the onnx wheel on target kryo: every node gets a generated kernel,
the outputs match the reference outputs stored beside each model (at the official suite's
tolerances, onnx/backend/test/data/real/test_<name>/data.json), and the tensor feeding the final
Softmax matches onnxruntime's (rtol 1e-3, atol 1e-4, as tests/models/test_light_models.py does
for the reference target; densenet121 has no final Softmax, its output is compared).

The inputs are the ones onnx's runner feeds these models (``arange(n) / n`` in the input's shape).
The light models' weights are constants, so every class gets the same logit: the stored
softmax outputs are near-uniform and nearly any finite computation matches them; the logits'
magnitude (1e0..1e31) still checks the whole network, hence the onnxruntime comparison.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("llvmlite")
onnx = pytest.importorskip("onnx")
from onnx import helper, numpy_helper  # noqa: E402

import qir  # noqa: E402
import qir.targets.kryo  # noqa: E402,F401  (registers the target)
from tests.models.test_light_models import (  # noqa: E402
    MODELS, PRE_SOFTMAX_ATOL, PRE_SOFTMAX_RTOL, final_softmax_input, official_inputs, onnxruntime_values)
from tests.targets.kryo.test_conformance import MODEL_OPS  # noqa: E402
from tests.targets.kryo.test_models import DIGITS  # noqa: E402


def test_model_op_sets_are_in_the_conformance_selection():
    """The conformance cases of test_conformance.py cover every op of these models."""
    paths = [m["path"] for m in MODELS] + [DIGITS / "digits.onnx"]
    assert len(MODELS) == 9, [m["name"] for m in MODELS]
    for path in paths:
        ops = {n.op_type for n in onnx.load(str(path)).graph.node}
        assert ops <= MODEL_OPS, (path.name, ops - MODEL_OPS)


def bench_module():
    """bench/kryo_vs_ort.py, whose torch models the kryo tests share."""
    import importlib.util
    from pathlib import Path

    pytest.importorskip("torch")
    path = Path(__file__).resolve().parents[3] / "bench" / "kryo_vs_ort.py"
    spec = importlib.util.spec_from_file_location("kryo_vs_ort", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def _bench_models(directory) -> dict[str, str]:
    """ResNet-18, MobileNetV2 and the transformer block of bench/kryo_vs_ort.py, exported there."""
    bench = bench_module()
    return {name: bench.export(name, str(directory)) for name in ("resnet18", "mobilenetv2", "transformer")}


def test_capability_table_covers_every_model(tmp_path):
    """KryoTarget.supports says yes for every node of every model after -O3: the nine light
    models, digits, and bench/kryo_vs_ort.py's ResNet-18, MobileNetV2 and transformer block."""
    from qir.passes import PassContext
    from qir.passes import run as run_passes
    from qir.targets.kryo import KryoTarget

    paths = {m["name"]: str(m["path"]) for m in MODELS}
    paths["digits"] = str(DIGITS / "digits.onnx")
    paths.update(_bench_models(tmp_path))
    target = KryoTarget()
    for name, path in paths.items():
        graph = run_passes(qir.load_onnx(path), None, ctx=PassContext(opt_level=3))
        declined = {f"{n.op} {n.name}": target.supports(n).reason for n in graph.nodes if not target.supports(n).ok}
        assert not declined, (name, declined)


def _with_output(model: "onnx.ModelProto", name: str) -> "onnx.ModelProto":
    """``model`` with the intermediate tensor ``name`` as an extra graph output."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    if name not in {o.name for o in probe.graph.output}:
        probe.graph.output.append(helper.make_empty_tensor_value_info(name))
    return probe


@pytest.mark.slow
@pytest.mark.parametrize("case", MODELS, ids=[m["name"] for m in MODELS])
def test_light_model_on_kryo(case):
    model = onnx.load(str(case["path"]))
    feeds = official_inputs(model)
    probe = final_softmax_input(model) or model.graph.output[0].name
    compiled = qir.compile(_with_output(model, probe), target="kryo")
    outs = compiled.run(feeds)

    # 1. no node falls back to its reference kernel
    spec = next(iter(compiled._executable._specs.values()))
    ops = {n.name: n.op for n in spec.graph.nodes}
    assert not spec.lowered.fallback, {ops[n]: why for n, why in spec.lowered.fallback.items()}
    assert len(spec.steps) == 1  # one call into generated code for the whole model

    # 2. the reference outputs, at the official suite's tolerances
    expected = [numpy_helper.to_array(onnx.load_tensor(str(p))) for p in case["outputs"]]
    for out, want in zip(model.graph.output, expected):
        got = outs[out.name]
        assert got.shape == want.shape and got.dtype == want.dtype
        np.testing.assert_allclose(got, want, rtol=case["rtol"], atol=case["atol"])

    # 3. the tensor feeding the final Softmax (or the output), against onnxruntime's
    pytest.importorskip("onnxruntime")
    theirs = onnxruntime_values(model, feeds, [probe])[probe]
    ours = outs[probe]
    assert ours.shape == theirs.shape
    assert np.abs(theirs).max() > 100 * PRE_SOFTMAX_ATOL, f"{probe} is ~0: the comparison is vacuous"
    np.testing.assert_allclose(ours, theirs, rtol=PRE_SOFTMAX_RTOL, atol=PRE_SOFTMAX_ATOL)
