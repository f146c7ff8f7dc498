"""ONNX → qir converters for the loss family: NegativeLogLikelihoodLoss and
SoftmaxCrossEntropyLoss.

Every opset version of these ops (NegativeLogLikelihoodLoss-12/13/22,
SoftmaxCrossEntropyLoss-12/13) has the same attributes and semantics; later versions only
admit more float types (bfloat16). One converter from version 12 on therefore covers all of
them, mapping attributes one to one (an absent ``ignore_index`` stays absent: no ignored label).
"""

from __future__ import annotations

from qir.frontends.onnx.registry import simple

simple("NegativeLogLikelihoodLoss", "loss.negative_log_likelihood_loss", since_version=12)
simple("SoftmaxCrossEntropyLoss", "loss.softmax_cross_entropy_loss", since_version=12)
