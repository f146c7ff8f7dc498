"""ONNX → qir converters for the training family: the optimizer ops of the
``ai.onnx.preview.training`` domain (Adagrad, Adam, Momentum; all at version 1, the only one).

Attributes map one to one. Gradient is not converted: it needs automatic differentiation of the
graph, which qir does not have.
"""

from __future__ import annotations

from qir.frontends.onnx.registry import simple

TRAINING_DOMAIN = "ai.onnx.preview.training"

simple("Adagrad", "training.adagrad", domain=TRAINING_DOMAIN)
simple("Adam", "training.adam", domain=TRAINING_DOMAIN)
simple("Momentum", "training.momentum", domain=TRAINING_DOMAIN)
