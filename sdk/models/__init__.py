"""Bundled offline models (ONNX) and their thin runtime wrappers."""


def require_onnxruntime():  # noqa: ANN201 - the module, imported lazily
    """onnxruntime, or one clear error naming the extra that installs it."""
    try:
        import onnxruntime
    except ImportError:
        from sdk.errors import DiscoverError

        raise DiscoverError("this model runs on ONNX Runtime, which is not installed: "
                            "pip install 'discover-sdk[edge]' (or [sink], or [gpu] for "
                            "onnxruntime-gpu)") from None
    return onnxruntime
