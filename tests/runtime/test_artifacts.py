"""Artifact folders: save/load round trips (float and int8), byte-identical rebuilds, atomic
replacement, and a ModelLoadError naming the file for every kind of damage."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

import qir
from qir.errors import ModelLoadError, OptionError
from qir.runtime import artifacts
from qir.runtime.artifacts import (CONTEXT_MAGIC, ENCODINGS, GRAPH, INPUT_SPECS, MANIFEST,
                                   context_path, manifest_digest, unwrap_context, wrap_context)

ROOT = Path(__file__).resolve().parents[2]
DIGITS = ROOT / "examples" / "digits"
CTX = context_path("reference")


@pytest.fixture(scope="module")
def digits_x() -> np.ndarray:
    return np.load(DIGITS / "digits_test.npz")["x"]


@pytest.fixture(scope="module")
def float_model():
    return qir.compile(str(DIGITS / "digits.onnx"))


@pytest.fixture(scope="module")
def int8_model(digits_x):
    return qir.compile(str(DIGITS / "digits.onnx"), quantize="int8",
                       calibration=[{"input": digits_x[:32]}])


@pytest.fixture
def saved(float_model, tmp_path) -> Path:
    return float_model.save(tmp_path / "out")


def files_of(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def rewrite(folder: Path, name: str, data: bytes, **manifest_changes) -> None:
    """Replace a file and re-seal the manifest, as a careful forger would: only the deeper
    checks (headers, versions, specs) can catch it."""
    if name != MANIFEST:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    manifest = json.loads((folder / MANIFEST).read_text())
    manifest.update(manifest_changes)
    if name != MANIFEST:
        import hashlib

        manifest["files"][name] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    manifest["sha256"] = manifest_digest(manifest)
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))


# -- round trips -----------------------------------------------------------------------------

def test_layout_and_float_round_trip(float_model, saved, digits_x):
    assert sorted(files_of(saved)) == sorted([CTX, INPUT_SPECS, MANIFEST, GRAPH])
    loaded = qir.load(saved)
    assert loaded.target == "reference" and loaded.options == float_model.options
    feeds = {"input": digits_x}
    np.testing.assert_array_equal(loaded.run(feeds)["logits"], float_model.run(feeds)["logits"])
    # The model is still the ONNX model: onnxruntime agrees with the reloaded artifact.
    session = ort.InferenceSession(str(DIGITS / "digits.onnx"), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(loaded.run(feeds)["logits"], session.run(None, feeds)[0],
                               rtol=1e-4, atol=1e-4)
    manifest = json.loads((saved / MANIFEST).read_text())
    assert manifest["target"] == "reference" and manifest["options"] == {"num_threads": 1}
    assert manifest["qir_version"] == qir.__version__ and manifest["quantized"] is False
    specs = json.loads((saved / INPUT_SPECS).read_text())
    assert specs["inputs"][0]["shape"] == ["N", 1, 8, 8] and specs["inputs"][0]["dtype"] == "f32"


def test_quantized_round_trip_takes_and_returns_float(int8_model, tmp_path, digits_x):
    out = int8_model.save(tmp_path / "q")
    assert (out / ENCODINGS).is_file()
    loaded = qir.load(out)
    feeds = {"input": digits_x[:50]}
    got = loaded.run(feeds)["logits"]
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, int8_model.run(feeds)["logits"])
    spec = json.loads((out / INPUT_SPECS).read_text())["inputs"][0]
    q = int8_model.inputs[0].quant
    assert spec["io_dtype"] == "f32" and spec["dtype"] == int8_model.inputs[0].dtype.value
    assert spec["quantization"] == {"scale": list(q.scale), "zero_point": list(q.zero_point),
                                    "bitwidth": q.bitwidth, "signed": q.signed, "axis": q.axis}
    encodings = json.loads((out / ENCODINGS).read_text())
    assert "input" in json.dumps(encodings["activation_encodings"])


def test_builds_are_byte_identical(float_model, int8_model, tmp_path):
    for model in (float_model, int8_model):
        a = files_of(model.save(tmp_path / "a"))
        b = files_of(model.save(tmp_path / "b"))
        assert a == b
        # Saving what was loaded gives the same bytes again.
        assert files_of(qir.load(tmp_path / "a").save(tmp_path / "c")) == a


def test_num_threads_override(saved):
    assert qir.load(saved, num_threads=2).options.num_threads == 2
    with pytest.raises(OptionError, match="num_threads"):
        qir.load(saved, num_threads=0)


# -- atomic writes ---------------------------------------------------------------------------

def test_replaces_an_artifact_only_when_complete(float_model, int8_model, saved, monkeypatch):
    before = files_of(saved)

    def broken(graph):
        raise RuntimeError("disk full")

    monkeypatch.setattr(artifacts.serialize, "dumps", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        int8_model.save(saved)
    monkeypatch.undo()
    assert files_of(saved) == before  # the old artifact is untouched
    assert [p.name for p in saved.parent.iterdir()] == ["out"]  # no temp folders left
    int8_model.save(saved)
    assert ENCODINGS in files_of(saved) and [p.name for p in saved.parent.iterdir()] == ["out"]


def test_never_replaces_a_folder_that_is_not_an_artifact(float_model, tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    with pytest.raises(OptionError, match="not a qir artifact"):
        float_model.save(folder)
    assert [p.name for p in folder.iterdir()] == ["notes.txt"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(OptionError, match="not a folder"):
        float_model.save(tmp_path / "file")
    with pytest.raises(OptionError, match="does not exist"):
        float_model.save(tmp_path / "no" / "such")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert qir.load(float_model.save(empty)).target == "reference"


# -- damage ----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", [CTX, INPUT_SPECS, GRAPH, MANIFEST, ENCODINGS])
@pytest.mark.parametrize("where", [0, 0.5, -1])
def test_a_flipped_byte_names_the_file(int8_model, tmp_path, name, where):
    out = int8_model.save(tmp_path / "q")
    path = out / name
    data = bytearray(path.read_bytes())
    data[int(where * len(data)) if where != -1 else -1] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(ModelLoadError) as info:
        qir.load(out)
    assert Path(name).name in info.value.message


@pytest.mark.parametrize("name", [CTX, INPUT_SPECS, GRAPH, MANIFEST])
def test_a_missing_file_names_it(saved, name):
    (saved / name).unlink()
    with pytest.raises(ModelLoadError, match=Path(name).name):
        qir.load(saved)


def test_not_a_folder(tmp_path):
    with pytest.raises(ModelLoadError, match="no such artifact"):
        qir.load(tmp_path / "nothing")


def test_context_header_checks(saved, monkeypatch):
    payload = unwrap_context((saved / CTX).read_bytes()).payload
    good = wrap_context("reference", payload)
    cases = {
        "not a qir context binary": b"XXXX" + good[4:],
        "format version 99": good[:4] + (99).to_bytes(2, "little") + good[6:],
        "truncated": good[:-10],
    }
    for message, data in cases.items():
        rewrite(saved, CTX, data)
        with pytest.raises(ModelLoadError, match=message) as info:
            qir.load(saved)
        assert CTX.split("/")[-1] in info.value.message
    # Another qir version's binary is refused with a way out (the graph is there to recompile).
    monkeypatch.setattr(artifacts, "__version__", "0.0.9")
    rewrite(saved, CTX, wrap_context("reference", payload))
    monkeypatch.undo()
    with pytest.raises(ModelLoadError, match="compiled by qir 0.0.9") as info:
        qir.load(saved)
    assert "qirc compile" in info.value.hint
    # A header naming another target than the manifest.
    rewrite(saved, CTX, wrap_context("kryo", payload))
    with pytest.raises(ModelLoadError, match="compiled for target 'kryo'"):
        qir.load(saved)
    assert good[:4] == CONTEXT_MAGIC


def test_unknown_target_and_bad_manifest_fields(saved):
    payload = unwrap_context((saved / CTX).read_bytes()).payload
    rewrite(saved, context_path("nosuch"), wrap_context("nosuch", payload), target="nosuch")
    with pytest.raises(ModelLoadError, match="unknown target 'nosuch'") as info:
        qir.load(saved)
    assert MANIFEST in info.value.message


@pytest.mark.parametrize("changes, message", [
    ({"format_version": 2}, "format version 2"),
    ({"options": {"num_threads": 1, "turbo": True}}, "options this qir does not know"),
    ({"options": {"num_threads": -1}}, "bad options"),
    ({"format": "zip"}, "not a qir artifact manifest"),
    ({"files": {}}, "does not list"),
])
def test_manifest_fields(saved, changes, message):
    rewrite(saved, MANIFEST, b"", **changes)
    with pytest.raises(ModelLoadError, match=message) as info:
        qir.load(saved)
    assert MANIFEST in info.value.message


def test_specs_must_match_the_graph(saved):
    specs = json.loads((saved / INPUT_SPECS).read_text())
    specs["inputs"][0]["shape"] = [1, 1, 8, 8]
    rewrite(saved, INPUT_SPECS, json.dumps(specs).encode())
    with pytest.raises(ModelLoadError, match="does not match") as info:
        qir.load(saved)
    assert INPUT_SPECS in info.value.message


def test_a_path_outside_the_folder_is_refused(saved):
    manifest = json.loads((saved / MANIFEST).read_text())
    manifest["files"]["../escape"] = {"sha256": "0" * 64, "size": 0}
    manifest["sha256"] = manifest_digest(manifest)
    (saved / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ModelLoadError, match="outside the artifact"):
        qir.load(saved)
