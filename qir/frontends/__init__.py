"""Frontends: ONNX, PyTorch, TensorFlow and TFLite models in, one typed Graph out."""
