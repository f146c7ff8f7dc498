"""load_calibration_set: feed dicts, .npy/.npz/.raw files, folders and QNN input lists."""

from __future__ import annotations

import numpy as np
import pytest

from qir.errors import InputError, QirError
from qir.ir.graph import Graph
from qir.ir.types import DType, TensorType
from qir.passes.quantize.dataset import load_calibration_set


def make_graph(*inputs) -> Graph:
    """A graph with the given (name, dtype, shape) inputs; calibration data only sees those."""
    graph = Graph("g")
    for name, dtype, shape in inputs:
        graph.add_input(name, TensorType(dtype, shape))
    return graph


ONE = make_graph(("x", DType.FLOAT32, (2, 3)))
TWO = make_graph(("image", DType.FLOAT32, ("N", 2, 2)), ("ids", DType.INT32, ("N",)))
RNG = np.random.default_rng(0)


def f32(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def same(a, b):
    np.testing.assert_array_equal(a, b)
    assert a.dtype == b.dtype


# -- in-memory ---------------------------------------------------------------------------------

def test_list_of_feed_dicts_and_single_dict():
    a, b = f32(2, 3), f32(2, 3)
    got = load_calibration_set([{"x": a}, {"x": b}], ONE)
    assert len(got) == 2
    same(got[0]["x"], a)
    same(got[1]["x"], b)
    same(load_calibration_set({"x": a}, ONE)[0]["x"], a)
    same(load_calibration_set(a, ONE)[0]["x"], a)  # a bare array feeds a one-input graph
    same(load_calibration_set(iter([a]), ONE)[0]["x"], a)


def test_float64_is_cast_to_float32_and_ints_to_the_input_width():
    got = load_calibration_set([{"image": np.ones((1, 2, 2)), "ids": np.array([7])}], TWO)[0]
    assert got["image"].dtype == np.float32 and got["ids"].dtype == np.int32
    with pytest.raises(InputError, match="'ids' must be i32"):
        load_calibration_set([{"image": f32(1, 2, 2), "ids": np.array([2**40])}], TWO)
    with pytest.raises(InputError, match="'ids' must be i32"):
        load_calibration_set([{"image": f32(1, 2, 2), "ids": np.array([1.0], np.float32)}], TWO)
    with pytest.raises(InputError, match="'image' must be f32"):
        load_calibration_set([{"image": np.ones((1, 2, 2), np.int64), "ids": np.array([1])}], TWO)


def test_shapes_are_checked_and_symbolic_dims_take_any_size():
    load_calibration_set([{"image": f32(5, 2, 2), "ids": np.zeros(5, np.int32)}], TWO)
    with pytest.raises(InputError, match=r"sample 0: input 'image': dim 1 must be 2, got 3"):
        load_calibration_set([{"image": f32(1, 3, 2), "ids": np.zeros(1, np.int32)}], TWO)
    with pytest.raises(InputError, match=r"'ids': dim 0 \(N\) is 4, but another input bound N to 1"):
        load_calibration_set([{"image": f32(1, 2, 2), "ids": np.zeros(4, np.int32)}], TWO)
    with pytest.raises(InputError, match=r"sample 1: input 'x' must have rank 2"):
        load_calibration_set([{"x": f32(2, 3)}, {"x": f32(6)}], ONE)


def test_names_are_checked():
    with pytest.raises(InputError, match=r"\['y'\] match no graph input; the graph takes 'x'"):
        load_calibration_set([{"x": f32(2, 3), "y": f32(2, 3)}], ONE)
    with pytest.raises(InputError, match=r"no data for inputs \['ids'\]"):
        load_calibration_set([{"image": f32(1, 2, 2)}], TWO)
    with pytest.raises(InputError, match="bare array can feed only a single-input graph"):
        load_calibration_set([f32(1, 2, 2)], TWO)


def test_empty_set_is_an_error():
    with pytest.raises(QirError, match="calibration set is empty"):
        load_calibration_set([], ONE)


# -- .npy / .npz ---------------------------------------------------------------------------------

def test_npy_one_sample_or_stacked(tmp_path):
    one, stack = f32(2, 3), f32(4, 2, 3)
    np.save(tmp_path / "one.npy", one)
    np.save(tmp_path / "stack.npy", stack)
    same(load_calibration_set(tmp_path / "one.npy", ONE)[0]["x"], one)
    got = load_calibration_set(str(tmp_path / "stack.npy"), ONE)
    assert len(got) == 4
    same(got[3]["x"], stack[3])
    np.save(tmp_path / "bad.npy", f32(3, 3))
    with pytest.raises(InputError, match=r"bad.npy: input 'x': dim 0 must be 2, got 3"):
        load_calibration_set(tmp_path / "bad.npy", ONE)
    with pytest.raises(InputError, match="a .npy file can feed only a single-input graph"):
        load_calibration_set(tmp_path / "one.npy", TWO)
    (tmp_path / "junk.npy").write_bytes(b"not numpy")
    with pytest.raises(InputError, match="junk.npy: not a readable .npy file"):
        load_calibration_set(tmp_path / "junk.npy", ONE)


def test_npz_one_sample_stacked_and_unnamed(tmp_path):
    image, ids = f32(3, 1, 2, 2), np.arange(3, dtype=np.int32).reshape(3, 1)
    np.savez(tmp_path / "stack.npz", image=image, ids=ids)
    got = load_calibration_set(tmp_path / "stack.npz", TWO)
    assert len(got) == 3
    same(got[2]["image"], image[2])
    same(got[2]["ids"], ids[2])
    np.savez(tmp_path / "one.npz", image=image[0], ids=ids[0])
    assert len(load_calibration_set(tmp_path / "one.npz", TWO)) == 1
    np.savez(tmp_path / "unnamed.npz", f32(5, 2, 3))  # np.savez names it arr_0
    assert len(load_calibration_set(tmp_path / "unnamed.npz", ONE)) == 5


def test_npz_problems_name_the_file(tmp_path):
    np.savez(tmp_path / "mixed.npz", image=f32(3, 1, 2, 2), ids=np.zeros(1, np.int32))
    with pytest.raises(InputError, match=r"mixed.npz: arrays \['ids'\] hold one sample"):
        load_calibration_set(tmp_path / "mixed.npz", TWO)
    np.savez(tmp_path / "counts.npz", image=f32(3, 1, 2, 2), ids=np.zeros((2, 1), np.int32))
    with pytest.raises(InputError, match="counts.npz: stacked arrays disagree on the sample count"):
        load_calibration_set(tmp_path / "counts.npz", TWO)
    np.savez(tmp_path / "names.npz", pixels=f32(1, 2, 2), ids=np.zeros(1, np.int32))
    with pytest.raises(InputError, match=r"names.npz: arrays \['pixels'\] match no graph input"):
        load_calibration_set(tmp_path / "names.npz", TWO)


# -- .raw, folders and input lists -------------------------------------------------------------

def test_folder_of_npy_raw_and_npz_in_name_order(tmp_path):
    a, b, c = f32(2, 3), f32(2, 3), f32(2, 2, 3)
    np.save(tmp_path / "a.npy", a)
    b.astype("<f4").tofile(tmp_path / "b.raw")
    np.savez(tmp_path / "c.npz", x=c)
    (tmp_path / "README.txt").write_text("ignored")
    (tmp_path / "sub").mkdir()
    got = load_calibration_set(tmp_path, ONE)
    assert len(got) == 4
    for feed, want in zip(got, [a, b, c[0], c[1]]):
        same(feed["x"], want)
    with pytest.raises(QirError, match="holds no .npy, .npz or .raw files"):
        load_calibration_set(tmp_path / "sub", ONE)
    with pytest.raises(InputError, match="a .npy file can feed only a single-input graph"):
        load_calibration_set(tmp_path, TWO)


def test_input_list_with_raw_files_like_qnn_net_run(tmp_path):
    graph = make_graph(("image", DType.FLOAT32, (1, 2, 2)), ("mask", DType.UINT8, (3,)))
    data = tmp_path / "data"
    data.mkdir()
    images = [f32(1, 2, 2) for _ in range(3)]
    masks = [RNG.integers(0, 255, 3).astype(np.uint8) for _ in range(3)]
    for i in range(3):
        images[i].astype("<f4").tofile(data / f"image{i}.raw")
        masks[i].tofile(data / f"mask{i}.raw")
    listing = tmp_path / "input_list.txt"
    listing.write_text(
        "%output_name\n"
        "# a comment\n"
        "data/image0.raw data/mask0.raw\n"
        "\n"
        f"mask:=data/mask1.raw image:={data / 'image1.raw'}\n"
        "image:=data/image2.raw   mask:=data/mask2.raw\n")
    got = load_calibration_set(listing, graph)
    assert len(got) == 3
    for feed, image, mask in zip(got, images, masks):
        same(feed["image"], image)
        same(feed["mask"], mask)


def test_input_list_accepts_qnn_sanitized_names_and_npy(tmp_path):
    graph = make_graph(("input:0", DType.FLOAT32, ("N", 3)))
    np.save(tmp_path / "s.npy", f32(4, 3))
    (tmp_path / "list.txt").write_text("input_0:=s.npy\n")
    assert load_calibration_set(tmp_path / "list.txt", graph)[0]["input:0"].shape == (4, 3)


@pytest.mark.parametrize("line,error", [
    ("x.raw y.raw", r"list.txt:2: 2 files for 1 inputs"),
    ("x:=x.raw y.raw", r"list.txt:2: mixes 'name:=path' and bare path"),
    ("z:=x.raw", r"list.txt:2: no graph input named 'z'"),
    ("x:=x.raw x:=x.raw", r"list.txt:2: input 'x' is given twice"),
    ("missing.raw", r"list.txt:2: file .*missing.raw for input 'x' does not exist"),
    ("short.raw", r"list.txt:2: short.raw holds 20 bytes; input 'x' \(f32\[2, 3\]\) needs 24"),
])
def test_input_list_problems_name_file_line_and_input(tmp_path, line, error):
    f32(2, 3).tofile(tmp_path / "x.raw")
    f32(5).tofile(tmp_path / "short.raw")
    (tmp_path / "list.txt").write_text(f"# header\n{line}\n")
    with pytest.raises(InputError, match=error):
        load_calibration_set(tmp_path / "list.txt", ONE)


def test_raw_needs_a_static_shape(tmp_path):
    f32(2, 2, 2).tofile(tmp_path / "i.raw")
    np.zeros(2, np.int32).tofile(tmp_path / "d.raw")
    (tmp_path / "list.txt").write_text("i.raw d.raw\n")
    with pytest.raises(InputError, match=r"list.txt:1: input 'image' has shape \['N', 2, 2\]; .raw file"):
        load_calibration_set(tmp_path / "list.txt", TWO)


def test_unreadable_paths(tmp_path):
    with pytest.raises(InputError, match="no such file or folder"):
        load_calibration_set(tmp_path / "nope.npz", ONE)
    (tmp_path / "data.bin").write_bytes(b"\xff\xfe\x00binary")
    with pytest.raises(InputError, match="data.bin: cannot read the input list"):
        load_calibration_set(tmp_path / "data.bin", ONE)
    (tmp_path / "empty.txt").write_text("# nothing\n")
    with pytest.raises(QirError, match="calibration set is empty"):
        load_calibration_set(tmp_path / "empty.txt", ONE)
