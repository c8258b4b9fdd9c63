"""Bundled offline models (ONNX) and their thin runtime wrappers."""
