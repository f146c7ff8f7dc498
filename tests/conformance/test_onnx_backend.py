"""The official ONNX backend test suite (node, simple, pytorch-converted, pytorch-operator, light)
run against QirBackend. Cases listed in expected_failures.txt are strict xfails: a regression
fails CI, and so does a newly passing case until it is removed from the list
(``make conformance-update`` rewrites the list)."""

import onnx.backend.test

from qir.onnx_backend import QirBackend

backend_test = onnx.backend.test.BackendTest(QirBackend, __name__)
# The light models are checked with stricter comparisons in tests/models/test_light_models.py.
backend_test.exclude(r"test_(bvlc_alexnet|densenet121|inception_v1|inception_v2|resnet50|shufflenet|squeezenet|vgg19|zfnet512)_")
# Only the CPU variants: qir's reference backend is a CPU backend.
backend_test.exclude(r"_cuda$")

globals().update(backend_test.test_cases)
