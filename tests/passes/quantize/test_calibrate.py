"""calibrate(): statistics of a model's tensors vs onnxruntime, and the calibration cache."""

from __future__ import annotations

import importlib

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from qir.errors import ModelLoadError, QirError
from qir.frontends.onnx import load_onnx
from qir.passes.quantize.calibrate import CalibrationTable, cache_dir, calibrate, clear_memory_cache

# The module itself: the package exports its calibrate() function under the same name.
calibrate_module = importlib.import_module("qir.passes.quantize.calibrate")
ALGORITHMS = ("minmax", "ma_minmax", "percentile", "mse", "entropy")


def make_model() -> onnx.ModelProto:
    """conv -> relu / sigmoid -> add -> global pool -> flatten -> matmul + bias."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "W"),
             numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "B"),
             numpy_helper.from_array(rng.standard_normal((4, 5)).astype(np.float32), "M"),
             numpy_helper.from_array(rng.standard_normal(5).astype(np.float32), "b2")]
    nodes = [helper.make_node("Conv", ["x", "W", "B"], ["conv"], pads=[1, 1, 1, 1], name="conv0"),
             helper.make_node("Relu", ["conv"], ["relu"], name="relu0"),
             helper.make_node("Sigmoid", ["conv"], ["sig"], name="sig0"),
             helper.make_node("Add", ["relu", "sig"], ["sum"], name="add0"),
             helper.make_node("GlobalAveragePool", ["sum"], ["pool"], name="pool0"),
             helper.make_node("Flatten", ["pool"], ["flat"], name="flat0"),
             helper.make_node("MatMul", ["flat", "M"], ["mm"], name="mm0"),
             helper.make_node("Add", ["mm", "b2"], ["y"], name="add1")]
    graph = helper.make_graph(nodes, "small", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 6, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return onnx.shape_inference.infer_shapes(model)


MODEL = make_model()
TENSORS = ["x", "conv", "relu", "sig", "sum", "pool", "flat", "mm", "y"]


def make_feeds(count=6, seed=1):
    rng = np.random.default_rng(seed)
    return [{"x": (rng.standard_normal((2, 3, 6, 6)) * (1 + i)).astype(np.float32)} for i in range(count)]


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Each test gets its own, empty cache (disk and memory)."""
    monkeypatch.setenv("QIR_CACHE_DIR", str(tmp_path / "cache"))
    clear_memory_cache()
    yield
    clear_memory_cache()


@pytest.fixture
def runs(monkeypatch):
    """Counts model runs made by calibrate."""
    count = {"runs": 0}
    real = calibrate_module.Interpreter

    class Counting(real):
        def run(self, feeds):
            count["runs"] += 1
            return super().run(feeds)

    monkeypatch.setattr(calibrate_module, "Interpreter", Counting)
    return count


def ort_intermediates(model: onnx.ModelProto, feeds, names):
    """Every named tensor's value per feed, from onnxruntime (all tensors made outputs)."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    known = {o.name for o in model.graph.output}
    for name in names:
        if name not in known and name != "x":
            model.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    wanted = [o.name for o in session.get_outputs()]
    per_feed = []
    for feed in feeds:
        values = dict(zip(wanted, session.run(wanted, feed)))
        values["x"] = feed["x"]
        per_feed.append(values)
    return per_feed


def test_stats_match_onnxruntime_intermediates():
    graph = load_onnx(MODEL)
    feeds = make_feeds()
    table = calibrate(graph, feeds, progress=False, cache=False)
    assert table.samples == len(feeds)
    assert set(TENSORS) <= set(table)
    reference = ort_intermediates(MODEL, feeds, TENSORS)
    for name in TENSORS:
        data = [r[name].astype(np.float64) for r in reference]
        stats = table[name]
        assert stats.count == sum(d.size for d in data), name
        np.testing.assert_allclose([stats.min, stats.max],
                                   [min(d.min() for d in data), max(d.max() for d in data)],
                                   rtol=1e-5, atol=1e-6, err_msg=name)
        np.testing.assert_allclose(stats.batch_max, [d.max() for d in data], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(stats.mean, np.concatenate([d.ravel() for d in data]).mean(),
                                   rtol=1e-4, atol=1e-5, err_msg=name)
    # Constants (weights) are not activations.
    assert "W" not in table and "M" not in table


class _OneFeed:
    def __init__(self, feed):
        self.feeds = [feed]

    def get_next(self):
        return self.feeds.pop() if self.feeds else None


def test_moving_average_minmax_matches_onnxruntime_calibrater(tmp_path):
    from onnxruntime.quantization.calibrate import MinMaxCalibrater

    path = tmp_path / "model.onnx"
    onnx.save(MODEL, path)
    calibrater = MinMaxCalibrater(path, augmented_model_path=str(tmp_path / "augmented.onnx"),
                                  moving_average=True, averaging_constant=0.1)
    calibrater.augment_graph()
    calibrater.create_inference_session()
    feeds = make_feeds()
    for feed in feeds:  # one batch per collect: onnxruntime then averages batch by batch
        calibrater.collect_data(_OneFeed(feed))
    theirs = calibrater.compute_data()
    table = calibrate(load_onnx(MODEL), feeds, progress=False, cache=False)
    compared = 0
    for name, data in theirs.items():
        if name in table:
            np.testing.assert_allclose(table.range(name, "ma_minmax", momentum=0.9),
                                       [float(np.ravel(v)[0]) for v in data.range_value], rtol=1e-5, atol=1e-6,
                                       err_msg=name)
            compared += 1
    assert compared >= 6


def test_values_restricts_what_is_observed():
    graph = load_onnx(MODEL)
    table = calibrate(graph, make_feeds(2), values=["relu", "W"], progress=False, cache=False)
    assert list(table) == ["relu", "W"]
    assert table["W"].count == 4 * 3 * 3 * 3 * 2  # a constant is seen once per run
    with pytest.raises(QirError, match=r"no values named \['nope'\]"):
        calibrate(graph, make_feeds(1), values=["nope"], progress=False)
    with pytest.raises(QirError, match="tensor 'nope' was not calibrated"):
        table["nope"]


def test_dataset_may_be_a_file(tmp_path):
    feeds = make_feeds(3)
    np.savez(tmp_path / "calib.npz", x=np.stack([f["x"] for f in feeds]))
    from_file = calibrate(load_onnx(MODEL), tmp_path / "calib.npz", progress=False, cache=False)
    direct = calibrate(load_onnx(MODEL), feeds, progress=False, cache=False)
    assert from_file.key == direct.key
    assert from_file.ranges() == direct.ranges()


def test_deterministic_and_no_output_off_a_terminal(capsys):
    graph = load_onnx(MODEL)
    a = calibrate(graph, make_feeds(), progress=True, cache=False)
    b = calibrate(graph, make_feeds(), progress=True, cache=False)
    for algorithm in ALGORITHMS:
        assert a.ranges(algorithm) == b.ranges(algorithm)
    assert capsys.readouterr() == ("", "")


# -- table files and cache -----------------------------------------------------------------------

def test_table_save_and_load(tmp_path):
    table = calibrate(load_onnx(MODEL), make_feeds(), progress=False, cache=False, channel_axis=1)
    table.save(tmp_path / "table.npz")
    again = CalibrationTable.load(tmp_path / "table.npz")
    assert (again.key, again.samples, list(again)) == (table.key, table.samples, list(table))
    for algorithm in ALGORITHMS:
        assert again.ranges(algorithm, bitwidth=8) == table.ranges(algorithm, bitwidth=8)
    np.testing.assert_array_equal(again["conv"].channel_max, table["conv"].channel_max)
    (tmp_path / "bad.npz").write_bytes(b"PK\x03\x04 torn")
    with pytest.raises(ModelLoadError, match="bad.npz: not a readable calibration table"):
        CalibrationTable.load(tmp_path / "bad.npz")
    with pytest.raises(ModelLoadError, match="missing.npz: cannot read"):
        CalibrationTable.load(tmp_path / "missing.npz")


def test_second_call_hits_the_cache(runs):
    graph, feeds = load_onnx(MODEL), make_feeds()
    first = calibrate(graph, feeds, progress=False)
    assert runs["runs"] == len(feeds)
    assert (cache_dir() / f"{first.key}.npz").is_file()
    second = calibrate(load_onnx(MODEL), feeds, progress=False)  # memory hit
    clear_memory_cache()
    third = calibrate(graph, feeds, progress=False)  # disk hit
    assert runs["runs"] == len(feeds)
    for table in (second, third):
        assert table.key == first.key
        assert table.ranges("entropy") == first.ranges("entropy")
    # Other data, other values or another graph: a new key, a new run.
    calibrate(graph, make_feeds(seed=2), progress=False)
    calibrate(graph, feeds, values=["relu"], progress=False)
    assert runs["runs"] == 3 * len(feeds)
    calibrate(graph, feeds, progress=False, cache=False)
    assert runs["runs"] == 4 * len(feeds)


@pytest.mark.parametrize("damage", ["garbage", "truncated", "other key"])
def test_corrupt_cache_file_is_recalibrated_and_rewritten(runs, damage):
    graph, feeds = load_onnx(MODEL), make_feeds(3)
    first = calibrate(graph, feeds, progress=False)
    path = cache_dir() / f"{first.key}.npz"
    if damage == "garbage":
        path.write_bytes(b"\x00" * 100)
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:500])
    else:
        other = calibrate(graph, make_feeds(3, seed=9), progress=False)
        path.write_bytes((cache_dir() / f"{other.key}.npz").read_bytes())
    before = runs["runs"]
    clear_memory_cache()
    again = calibrate(graph, feeds, progress=False)
    assert runs["runs"] == before + len(feeds)
    assert again.ranges() == first.ranges()
    assert CalibrationTable.load(path).key == first.key  # rewritten whole


def test_cache_evicts_least_recently_used(runs, monkeypatch):
    graph = load_onnx(MODEL)
    one = calibrate(graph, make_feeds(2, seed=1), progress=False)
    size = (cache_dir() / f"{one.key}.npz").stat().st_size
    monkeypatch.setattr(calibrate_module, "CACHE_LIMIT_BYTES", int(size * 2.5))
    two = calibrate(graph, make_feeds(2, seed=2), progress=False)
    clear_memory_cache()
    calibrate(graph, make_feeds(2, seed=1), progress=False)  # touch: one is now the newer
    three = calibrate(graph, make_feeds(2, seed=3), progress=False)
    left = {p.stem for p in cache_dir().glob("*.npz")}
    assert left == {one.key, three.key}, two.key


def test_unwritable_cache_does_not_fail(tmp_path, monkeypatch):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    monkeypatch.setenv("QIR_CACHE_DIR", str(blocker))
    table = calibrate(load_onnx(MODEL), make_feeds(2), progress=False)
    assert "relu" in table
