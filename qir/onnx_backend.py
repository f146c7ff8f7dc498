"""QirBackend: qir behind onnx's Backend API, so the official ONNX backend tests run on it."""

from __future__ import annotations

from typing import Any

import onnx
from onnx.backend.base import Backend, BackendRep

from qir.api import compile as qir_compile


class QirBackendRep(BackendRep):
    def __init__(self, model):
        self.model = model

    def run(self, inputs: Any, **kwargs: Any) -> tuple:
        if isinstance(inputs, dict):
            feeds = dict(inputs)
        else:
            if not isinstance(inputs, (list, tuple)):
                inputs = [inputs]
            feeds = {spec.name: x for spec, x in zip(self.model.inputs, inputs)}
        outs = self.model.run(feeds)
        return tuple(outs.values())


class QirBackend(Backend):
    """Runs ONNX models on qir's reference target (or another, via ``device``-free kwargs)."""

    @classmethod
    def prepare(cls, model: onnx.ModelProto, device: str = "CPU", **kwargs: Any) -> QirBackendRep:
        target = kwargs.pop("target", "reference")
        return QirBackendRep(qir_compile(model, target=target))

    @classmethod
    def run_model(cls, model: onnx.ModelProto, inputs: Any, device: str = "CPU", **kwargs: Any):
        return cls.prepare(model, device, **kwargs).run(inputs)

    @classmethod
    def supports_device(cls, device: str) -> bool:
        return device == "CPU"
