"""Person masks: MediaPipe selfie segmentation on ONNX Runtime.

The offline default segmentation model: it needs no model hub and no download, because the
converted ONNX file (``weights/selfie_segmentation.onnx``, made by
``tools/convert_person_mask.py`` from the ``.tflite`` inside PyPI's ``mediapipe==0.10.14``;
licence in ``weights/NOTICE.md``) ships with the SDK, and it runs without mediapipe.

Model facts (checked): input ``input_1`` (1, 256, 256, 3) float32 NHWC, output
``activation_10`` (1, 256, 256, 1), the person probability with the sigmoid inside the graph.
Preprocessing as MediaPipe's own graph (``selfie_segmentation_cpu.binarypb``:
``ImageToTensorCalculator`` 256x256, ``keep_aspect_ratio: false``, float range [0, 1]) and the
model's TFLite metadata (normalisation 0 / 255): RGB, plain resize (stretch), pixel / 255.

The model was made for selfies and video calls (one or two people filling the view). On a
whole surveillance frame its people are a few pixels tall and it misses them, so
:meth:`PersonMask.probabilities_in_box` runs it on a square window around one person box, where
the person fills the view as the model expects.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
from discover.sdk.errors import DiscoverError
from discover.sdk.models import ModelWeightsNotFoundError, open_session  # noqa: F401

DEFAULT_WEIGHTS = Path(__file__).resolve().parent / "weights" / "selfie_segmentation.onnx"
CONVERT_COMMAND = "python tools/convert_person_mask.py"

Window = tuple[int, int, int, int]  # x0, y0, x1, y1 in frame pixels, x1/y1 exclusive


class PersonMask:
    """Person probability maps: ``PersonMask().probabilities(frame_bgr)`` -> HxW float32.

    Runs the bundled ONNX graph with ONNX Runtime (CUDA first when that provider is installed
    and usable, else CPU)."""

    def __init__(
        self,
        model_path: str | Path | None = None,
        *,
        intra_op_num_threads: int = 2,
        providers: list[str] | None = None,
    ) -> None:
        path = Path(model_path) if model_path is not None else DEFAULT_WEIGHTS
        self.model_path = path
        self.session = open_session(
            path, what="person-mask",
            origin="selfie_segmentation.tflite from the PyPI wheel mediapipe==0.10.14",
            convert_command=CONVERT_COMMAND, threads=intra_op_num_threads, providers=providers)
        inp = self.session.get_inputs()[0]
        shape = inp.shape
        if len(shape) != 4 or shape[-1] != 3 or not all(isinstance(v, int) for v in shape[1:3]):
            raise DiscoverError(f"{path} is not a selfie segmentation graph (input {inp.name} "
                                f"{shape}); recreate it with `{CONVERT_COMMAND}`.")
        self._input_name = inp.name
        self.input_hw = (int(shape[1]), int(shape[2]))

    def preprocess(self, image_bgr: np.ndarray) -> np.ndarray:
        """Plain resize to the network size, BGR -> RGB, [0, 1], NHWC batch of one."""
        if image_bgr.ndim == 2:
            image_bgr = cv2.cvtColor(image_bgr, cv2.COLOR_GRAY2BGR)
        if image_bgr.ndim != 3 or image_bgr.shape[2] != 3 or min(image_bgr.shape[:2]) < 1:
            raise ValueError(f"expected an HxWx3 BGR image, got shape {image_bgr.shape}")
        h, w = self.input_hw
        shrink = image_bgr.shape[0] > h or image_bgr.shape[1] > w
        resized = cv2.resize(image_bgr, (w, h),
                             interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
        rgb = cv2.cvtColor(resized, cv2.COLOR_BGR2RGB).astype(np.float32) * (1.0 / 255.0)
        return np.ascontiguousarray(rgb[None])

    def probabilities(self, image_bgr: np.ndarray) -> np.ndarray:
        """Person probability per pixel of ``image_bgr`` (HxW float32 in [0, 1])."""
        out = self.session.run(None, {self._input_name: self.preprocess(image_bgr)})[0]
        prob = out.reshape(self.input_hw)
        h, w = image_bgr.shape[:2]
        return cv2.resize(prob, (w, h), interpolation=cv2.INTER_LINEAR).clip(0.0, 1.0)

    def probabilities_in_box(
        self, image_bgr: np.ndarray, box: Sequence[float], context: float = 0.3
    ) -> tuple[np.ndarray, Window]:
        """Run the model on a square window centred on ``box`` (x0, y0, x1, y1), its side the
        box's longer side times ``1 + context`` (parts outside the frame are black), and return
        the probabilities of the window's part inside the frame with that part's pixel window."""
        x0, y0, x1, y1 = (float(v) for v in box)
        height, width = image_bgr.shape[:2]
        side = max(2, int(round(max(x1 - x0, y1 - y0) * (1.0 + context))))
        wx0 = int(round((x0 + x1 - side) / 2))
        wy0 = int(round((y0 + y1 - side) / 2))
        window = np.zeros((side, side, 3), np.uint8)
        fx0, fy0 = max(wx0, 0), max(wy0, 0)
        fx1, fy1 = min(wx0 + side, width), min(wy0 + side, height)
        if fx1 <= fx0 or fy1 <= fy0:
            return np.zeros((0, 0), np.float32), (0, 0, 0, 0)
        window[fy0 - wy0:fy1 - wy0, fx0 - wx0:fx1 - wx0] = image_bgr[fy0:fy1, fx0:fx1]
        prob = self.probabilities(window)
        return prob[fy0 - wy0:fy1 - wy0, fx0 - wx0:fx1 - wx0], (fx0, fy0, fx1, fy1)
