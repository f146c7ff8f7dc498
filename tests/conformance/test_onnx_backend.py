"""The official ONNX backend test suite (node, simple, pytorch-converted, pytorch-operator, light)
run against QirBackend. Cases listed in expected_failures.txt are strict xfails: a regression
fails CI, and so does a newly passing case until it is removed from the list
(``make conformance-update`` rewrites the list)."""

import onnx.backend.test

from qir.onnx_backend import QirBackend

backend_test = onnx.backend.test.BackendTest(QirBackend, __name__)
# The CUDA variants and the light models (checked more strictly in tests/models) are deselected
# in conftest.py, so that they count neither as passed nor as skipped.
globals().update(backend_test.test_cases)
