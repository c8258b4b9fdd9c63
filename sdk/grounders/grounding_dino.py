"""``grounding-dino``: open-vocabulary grounding with the task profile's labels (seed §3.1.2).

Grounding DINO (transformers) takes the frame and a text prompt ``"label1 . label2 . ..."`` and
gives boxes with a probability for every text token. Its text input is limited to 256 tokens,
while a task profile has 100+ labels, so the labels are split into chunks by token count and the
model runs once per chunk; every box is mapped back to the one profile label whose tokens it
matches best and the chunks' boxes are merged by per-label NMS.

::

    labels ──(once per label list)──> phrases ──BERT tokenizer──> chunks, each
                                                                  [CLS] l1 . l2 . … [SEP]
                                                                  <= max_text_tokens
    frame (BGR uint8) -> RGB -> resize + normalise (once per frame) -> pixel_values
        │
        └─ for each chunk: Grounding DINO(pixel_values, chunk ids)
               (Swin features computed for the first chunk, reused for the others)
             -> queries x (box, token probabilities)
             -> box score = max token probability > box_threshold
             -> label = profile label whose token span scores highest (> text_threshold)
    all chunks -> per-label NMS (nms_iou) -> [Detection(pixel box, label, score)], best first

Weights come from a local folder (``save_pretrained`` layout) or the Hugging Face cache; nothing
is downloaded unless ``allow_download`` is set. Image preprocessing follows the checkpoint's
``preprocessor_config.json`` but is done with OpenCV, so neither Pillow nor torchvision is needed.
"""

from __future__ import annotations

import logging
import re
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import cv2
import numpy as np
from discover.sdk.boxes import nms
from discover.sdk.devices import torch_device
from discover.sdk.errors import DiscoverError
from discover.sdk.grounders.base import GROUNDERS, Grounder, GrounderConfig
from discover.sdk.hub import is_path_like, short_reason
from discover.sdk.regions import Detection
from pydantic import Field

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

DEFAULT_MODEL = "IDEA-Research/grounding-dino-tiny"
_CHUNK_CACHE = 8  # label lists whose chunks are kept (labels rarely change)


class GroundingDinoConfig(GrounderConfig):
    type: Literal["grounding-dino"] = "grounding-dino"
    model: str = Field(DEFAULT_MODEL, description="local folder (save_pretrained layout) or "
                       "Hugging Face model id, looked up in the HF cache")
    revision: str | None = Field(None, description="model revision (branch, tag or commit) "
                                 "for a Hugging Face model id")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: cuda if available")
    box_threshold: float = Field(0.25, ge=0, le=1, description="keep boxes whose confidence "
                                 "exceeds this; recall-leaning on purpose: a missed object is "
                                 "never sent, a false box only costs bits (1 keeps none)")
    text_threshold: float = Field(0.25, ge=0, le=1, description="a box gets a label only if "
                                  "one of the label's tokens exceeds this probability")
    nms_iou: float = Field(0.5, gt=0, le=1, description="per-label NMS: boxes of one label "
                           "overlapping more than this are merged")
    max_text_tokens: int = Field(256, ge=4, description="text tokens per forward pass, "
                                 "[CLS]/[SEP] and '.' separators included (model limit 256); "
                                 "longer label lists run in several chunks")
    allow_download: bool = Field(False, description="fetch a missing model from the Hugging "
                                 "Face hub (off: offline, cache or local folder only)")


# -- labels -> token chunks ------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class TextChunk:
    """One forward pass's text: profile labels, their token ids and where each label sits."""

    labels: tuple[str, ...]  #: the profile's label strings, in list order
    phrases: tuple[str, ...]  #: what the model reads for each label (lower case, no '.')
    input_ids: tuple[int, ...]  #: [CLS] l1 . l2 . ... [SEP]
    spans: tuple[tuple[int, int], ...]  #: token range [start, end) of each label

    @property
    def text(self) -> str:
        """The prompt as text (``"car . traffic light ."``); tokenizes to ``input_ids``."""
        return " . ".join(self.phrases) + " ."


def label_phrase(label: str) -> str:
    """What the model reads for a label: lower case, single spaces, no '.' or '?' (the model
    splits its prompt into phrases at these)."""
    return " ".join(re.sub(r"[.?]", " ", label.lower()).split())


def plan_chunks(labels: Sequence[str], tokenizer: Any, max_tokens: int) -> list[TextChunk]:
    """Split ``labels`` into prompts of at most ``max_tokens`` tokens each (special tokens and
    separators counted), in order, every label in exactly one chunk.

    Token ids are built by concatenating each label's own tokens, which for BERT's word-piece
    tokenizer is exactly what tokenizing the joined prompt gives. Labels that are empty or repeat
    an earlier label's phrase are left out (their boxes would be indistinguishable).
    """
    cls_id, sep_id = tokenizer.cls_token_id, tokenizer.sep_token_id
    dot = list(tokenizer(".", add_special_tokens=False)["input_ids"])
    if cls_id is None or sep_id is None or len(dot) != 1:
        raise DiscoverError("the grounding-dino tokenizer has no [CLS]/[SEP] tokens or splits "
                            "'.'; the model folder needs Grounding DINO's BERT tokenizer")
    budget = max_tokens - 2  # [CLS] ... [SEP]
    if budget < 2:
        raise DiscoverError(f"grounder.max_text_tokens={max_tokens} is too small; use at least 4")
    entries: list[tuple[str, str]] = []
    seen: set[str] = set()
    for label in labels:
        phrase = label_phrase(label)
        if not phrase or phrase in seen:
            log.warning("grounding-dino: label %r is empty or repeats an earlier label; "
                        "it is not grounded", label)
            continue
        seen.add(phrase)
        entries.append((label, phrase))
    if not entries:
        return []
    token_lists = tokenizer([p for _, p in entries], add_special_tokens=False)["input_ids"]

    chunks: list[TextChunk] = []
    cur: list[tuple[str, str, list[int]]] = []
    used = 0

    def flush() -> None:
        ids, spans = [cls_id], []
        for _, _, toks in cur:
            spans.append((len(ids), len(ids) + len(toks)))
            ids += toks + dot
        ids.append(sep_id)
        chunks.append(TextChunk(tuple(e[0] for e in cur), tuple(e[1] for e in cur),
                                tuple(ids), tuple(spans)))

    for (label, phrase), toks in zip(entries, token_lists, strict=True):
        toks = list(toks)
        if len(toks) + 1 > budget:
            log.warning("grounding-dino: label %r is %d tokens, cut to %d to fit "
                        "max_text_tokens", label, len(toks), budget - 1)
            toks = toks[:budget - 1]
        if cur and used + len(toks) + 1 > budget:
            flush()
            cur, used = [], 0
        cur.append((label, phrase, toks))
        used += len(toks) + 1
    flush()
    return chunks


# -- frames -> pixel values -------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class ImageTransform:
    """The Grounding DINO image processor's resize, rescale and normalise, done with OpenCV.

    Parameters come from the checkpoint's image-processor config, so the model sees what the
    transformers processor would give it (up to resampling), without Pillow or torchvision.
    """

    shortest_edge: int | None = 800
    longest_edge: int | None = 1333
    height: int | None = None  #: fixed output size instead of shortest/longest edge
    width: int | None = None
    do_resize: bool = True
    do_rescale: bool = True
    rescale_factor: float = 1 / 255
    do_normalize: bool = True
    image_mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    image_std: tuple[float, float, float] = (0.229, 0.224, 0.225)

    @classmethod
    def from_processor_dict(cls, d: dict[str, Any]) -> ImageTransform:
        """Read a ``preprocessor_config.json`` dict (any of its size layouts)."""
        size = d.get("size", {"shortest_edge": 800, "longest_edge": 1333})
        kw: dict[str, Any] = {}
        if isinstance(size, int):  # legacy: size + max_size
            kw.update(shortest_edge=size, longest_edge=d.get("max_size"))
        elif isinstance(size, dict) and size.get("shortest_edge"):
            kw.update(shortest_edge=int(size["shortest_edge"]),
                      longest_edge=size.get("longest_edge") or d.get("max_size"))
        elif isinstance(size, dict) and size.get("height") and size.get("width"):
            kw.update(shortest_edge=None, longest_edge=None, height=int(size["height"]),
                      width=int(size["width"]))
        else:
            raise DiscoverError(f"grounding-dino image processor size {size!r} is not supported; "
                                "use {'shortest_edge': N, 'longest_edge': M} in "
                                "preprocessor_config.json")
        for key in ("do_resize", "do_rescale", "do_normalize"):
            if key in d:
                kw[key] = bool(d[key])
        if "rescale_factor" in d:
            kw["rescale_factor"] = float(d["rescale_factor"])
        for key in ("image_mean", "image_std"):
            if key in d:
                v = d[key]
                kw[key] = tuple(float(x) for x in (v if isinstance(v, list) else [v] * 3))
        return cls(**kw)

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """(height, width) after resizing, as transformers' ``get_size_with_aspect_ratio``."""
        if not self.do_resize:
            return height, width
        if self.height and self.width:
            return self.height, self.width
        size, max_size = int(self.shortest_edge or min(height, width)), self.longest_edge
        raw = None
        if max_size is not None:
            lo, hi = float(min(height, width)), float(max(height, width))
            if hi / lo * size > max_size:
                raw = max_size * lo / hi
                size = int(round(raw))
        if (height <= width and height == size) or (width <= height and width == size):
            return height, width
        if width < height:
            return (int(raw * height / width) if raw is not None else int(size * height / width),
                    size)
        return size, int(raw * width / height) if raw is not None else int(size * width / height)

    def resize_rgb(self, frame_bgr: np.ndarray) -> np.ndarray:
        """BGR uint8 frame -> resized RGB uint8 (area filter when shrinking, like antialiasing)."""
        h, w = frame_bgr.shape[:2]
        oh, ow = self.output_size(h, w)
        if (oh, ow) != (h, w):
            interp = cv2.INTER_AREA if oh * ow < h * w else cv2.INTER_LINEAR
            frame_bgr = cv2.resize(frame_bgr, (ow, oh), interpolation=interp)
        return cv2.cvtColor(frame_bgr, cv2.COLOR_BGR2RGB)

    def pixel_values(self, frame_bgr: np.ndarray, device: Any) -> torch.Tensor:
        """BGR uint8 HxWx3 -> float32 1x3xhxw on ``device`` (normalised there, cheap on a GPU)."""
        import torch

        rgb = self.resize_rgb(frame_bgr)
        x = torch.from_numpy(np.ascontiguousarray(rgb)).to(device).permute(2, 0, 1)[None].float()
        if self.do_rescale:
            x = x * self.rescale_factor
        if self.do_normalize:
            mean = torch.tensor(self.image_mean, device=x.device).view(1, 3, 1, 1)
            std = torch.tensor(self.image_std, device=x.device).view(1, 3, 1, 1)
            x = (x - mean) / std
        return x


# -- model outputs -> detections --------------------------------------------------------------

def decode_chunk(probs: np.ndarray, boxes: np.ndarray, chunk: TextChunk, width: int,
                 height: int, box_threshold: float, text_threshold: float) -> list[Detection]:
    """One chunk's model output -> detections carrying exact profile labels.

    ``probs``: queries x tokens (sigmoid of the logits, the chunk's tokens only); ``boxes``:
    queries x (cx, cy, w, h) relative to the image. A box's score is its highest token
    probability (Grounding DINO's box confidence); its label is the profile label whose token
    span holds the highest probability, if that exceeds ``text_threshold``; otherwise the box is
    dropped, so a label never comes out as a partial or merged phrase.
    """
    if not chunk.spans or probs.size == 0:
        return []
    scores = probs.max(axis=1)
    keep = np.flatnonzero(scores > box_threshold)
    if keep.size == 0:
        return []
    span_scores = np.stack([probs[keep, s:e].max(axis=1) for s, e in chunk.spans], axis=1)
    best = span_scores.argmax(axis=1)
    out = []
    for row, (q, j) in enumerate(zip(keep, best, strict=True)):
        if span_scores[row, j] <= text_threshold:
            continue
        cx, cy, bw, bh = (float(v) for v in boxes[q])
        x0 = min(max((cx - bw / 2) * width, 0.0), float(width))
        y0 = min(max((cy - bh / 2) * height, 0.0), float(height))
        x1 = min(max((cx + bw / 2) * width, 0.0), float(width))
        y1 = min(max((cy + bh / 2) * height, 0.0), float(height))
        if x1 > x0 and y1 > y0:
            out.append(Detection((x0, y0, x1, y1), chunk.labels[j], float(scores[q])))
    return out


def per_label_nms(dets: Sequence[Detection], iou_threshold: float) -> list[Detection]:
    """NMS within each label (boxes of different labels never suppress each other); the
    survivors sorted by score, best first."""
    by_label: dict[str, list[Detection]] = {}
    for d in dets:
        by_label.setdefault(d.label, []).append(d)
    out: list[Detection] = []
    for group in by_label.values():
        keep = nms(np.array([d.box for d in group]), np.array([d.score for d in group]),
                   iou_threshold)
        out += [group[i] for i in keep]
    out.sort(key=lambda d: -d.score)
    return out


# -- loading ------------------------------------------------------------------------------------

@dataclass(slots=True)
class LoadedModel:
    """What the grounder runs: tokenizer, image transform and the detection model on a device."""

    tokenizer: Any
    transform: ImageTransform
    net: Any  # transformers.GroundingDinoForObjectDetection
    device: Any  # torch.device




def resolve_device(device: str) -> torch.device:
    """``auto`` -> cuda if available, else cpu; ``cuda`` without a GPU is a user error."""
    return torch_device(device, "grounder.device")


def load_model(model: str, revision: str | None = None, allow_download: bool = False,
               device: str = "auto") -> LoadedModel:
    """Load tokenizer, image-processor settings and weights from a local folder or the Hugging
    Face cache (downloading only if ``allow_download``); any failure is one DiscoverError line
    naming the model and how to get it."""
    try:
        import torch  # noqa: F401
        from transformers import AutoConfig, AutoTokenizer, GroundingDinoForObjectDetection
        from transformers.image_processing_base import ImageProcessingMixin
    except ImportError as e:
        raise DiscoverError(f"grounder 'grounding-dino' needs torch and transformers ({short_reason(e)}); "
                            "install them: pip install 'discover-sdk[grounding]'") from None

    folder = Path(model).expanduser()
    local = folder.is_dir()
    get_it = (f"on a machine with internet run `hf download {DEFAULT_MODEL} --local-dir DIR` "
              "(older huggingface_hub: huggingface-cli download ...), copy DIR here and set "
              "grounder.model to it")
    if not local and is_path_like(model):
        raise DiscoverError(f"grounding-dino model folder {model} does not exist; {get_it}")
    source = str(folder) if local else model
    kw: dict[str, Any] = {"local_files_only": local or not allow_download}
    if not local and revision:
        kw["revision"] = revision
    dev = resolve_device(device)
    try:
        config = AutoConfig.from_pretrained(source, **kw)
        if getattr(config, "model_type", None) != "grounding-dino":
            raise DiscoverError(f"grounding-dino model {model} is a "
                                f"'{getattr(config, 'model_type', '?')}' model, not Grounding DINO; "
                                f"set grounder.model to a Grounding DINO checkpoint ({DEFAULT_MODEL})")
        tokenizer = AutoTokenizer.from_pretrained(source, **kw)
        processor_dict, _ = ImageProcessingMixin.get_image_processor_dict(source, **kw)
        transform = ImageTransform.from_processor_dict(processor_dict)
        net = GroundingDinoForObjectDetection.from_pretrained(source, config=config, **kw)
    except DiscoverError:
        raise
    except Exception as e:  # transformers/hub raise OSError, ValueError, HF errors...
        why = short_reason(e)
        if local:
            msg = (f"cannot load grounding-dino model from folder {source} ({why}); it must hold "
                   "config.json, the weights, the tokenizer and preprocessor_config.json as "
                   f"save_pretrained writes them; {get_it}")
        elif kw["local_files_only"]:
            # OSError here is transformers' "not in the cache" (its text speaks of connecting,
            # which did not happen: local_files_only), so only other errors are quoted
            why = "" if isinstance(e, OSError) else f" ({why})"
            msg = (f"grounding-dino model '{model}' is neither a folder here nor in the Hugging "
                   f"Face cache, and downloads are off{why}; on a machine with internet run "
                   f"`hf download {model}` (older huggingface_hub: `huggingface-cli download "
                   f"{model}`) and copy the cache (~/.cache/huggingface) here, set grounder.model "
                   "to a local folder holding the model, or set grounder.allow_download: true")
        else:
            msg = (f"cannot download grounding-dino model '{model}' ({why}); check the model id "
                   "and the network, or set grounder.model to a local folder holding the model")
        raise DiscoverError(msg) from None
    net = net.float().to(dev).eval()
    log.info("grounding-dino: loaded %s on %s", source, dev)
    return LoadedModel(tokenizer, transform, net, dev)


class BackboneReuse:
    """Runs the vision backbone once per frame although the model runs once per text chunk.

    Grounding DINO's ``forward`` has no argument for precomputed image features: its
    ``encoder_outputs`` are the *text-fused* encoder states, which depend on the chunk's text, so
    they cannot be shared. The Swin backbone (with its position embeddings) sees only the image,
    though, so inside :meth:`frame` the backbone module's ``forward`` returns the features it
    computed for the same pixel tensor before. If a transformers release moves the backbone, the
    hook is not installed and every chunk simply runs the backbone again.
    """

    def __init__(self, net: Any) -> None:
        self.enabled = True
        self.runs = 0  #: backbone evaluations (tests check the reuse)
        self._active = False
        self._key: tuple[Any, Any] | None = None
        self._value: tuple[list, list] | None = None
        backbone = getattr(getattr(net, "model", None), "backbone", None)
        self._inner: Callable[..., Any] | None = getattr(backbone, "forward", None)
        self.installed = backbone is not None and self._inner is not None
        if self.installed:
            backbone.forward = self._forward
        else:
            log.debug("grounding-dino: no backbone to hook; features are recomputed per chunk")

    def _forward(self, pixel_values: Any, pixel_mask: Any, *args: Any, **kwargs: Any) -> Any:
        assert self._inner is not None
        key = self._key
        if (self._active and self.enabled and not args and not kwargs and key is not None
                and key[0] is pixel_values and key[1] is pixel_mask and self._value is not None):
            features, positions = self._value
        else:
            features, positions = self._inner(pixel_values, pixel_mask, *args, **kwargs)
            self.runs += 1
            if self._active and self.enabled:
                self._key, self._value = (pixel_values, pixel_mask), (features, positions)
        # fresh lists: the model appends extra feature levels' position embeddings to its list
        return list(features), list(positions)

    @contextmanager
    def frame(self) -> Iterator[None]:
        """Share backbone features between the forward passes run inside; drop them after."""
        self._active = True
        try:
            yield
        finally:
            self._active = False
            self._key = self._value = None


# -- the grounder -------------------------------------------------------------------------------

@GROUNDERS.register
class GroundingDinoGrounder(Grounder):
    key = "grounding-dino"
    Config = GroundingDinoConfig
    config: GroundingDinoConfig

    def __init__(self, config: GroundingDinoConfig) -> None:
        super().__init__(config)
        loaded = load_model(config.model, config.revision, config.allow_download, config.device)
        self.tokenizer = loaded.tokenizer
        self.transform = loaded.transform
        self.model = loaded.net
        self.device = loaded.device
        self.max_text_tokens = min(config.max_text_tokens,
                                   int(getattr(self.model.config, "max_text_len", 256)))
        self.backbone = BackboneReuse(self.model)
        self._chunks: OrderedDict[tuple[str, ...], list[TextChunk]] = OrderedDict()
        self._ids: dict[tuple[int, ...], dict[str, torch.Tensor]] = {}

    def chunks(self, labels: Sequence[str]) -> list[TextChunk]:
        """The text chunks for a label list (planned once per list, then cached)."""
        key = tuple(labels)
        hit = self._chunks.get(key)
        if hit is not None:
            self._chunks.move_to_end(key)
            return hit
        import torch

        plan = plan_chunks(key, self.tokenizer, self.max_text_tokens)
        if len(plan) > 1:
            log.info("grounding-dino: %d labels run as %d chunks of <= %d tokens", len(key),
                     len(plan), self.max_text_tokens)
        self._chunks[key] = plan
        while len(self._chunks) > _CHUNK_CACHE:
            self._chunks.popitem(last=False)
        live = {c.input_ids for p in self._chunks.values() for c in p}
        self._ids = {k: v for k, v in self._ids.items() if k in live}
        for c in plan:
            if c.input_ids not in self._ids:
                ids = torch.tensor([c.input_ids], dtype=torch.long, device=self.device)
                self._ids[c.input_ids] = {"input_ids": ids,
                                          "attention_mask": torch.ones_like(ids),
                                          "token_type_ids": torch.zeros_like(ids)}
        return plan

    def ground(self, frame: np.ndarray, labels: Sequence[str]) -> list[Detection]:
        import torch

        plan = self.chunks(labels)
        if not plan:
            return []
        c = self.config
        height, width = frame.shape[:2]
        pixel_values = self.transform.pixel_values(frame, self.device)
        pixel_mask = torch.ones((1, *pixel_values.shape[-2:]), dtype=torch.long,
                                device=self.device)
        dets: list[Detection] = []
        with torch.inference_mode(), self.backbone.frame():
            for chunk in plan:
                out = self.model(pixel_values=pixel_values, pixel_mask=pixel_mask,
                                 **self._ids[chunk.input_ids])
                n = len(chunk.input_ids)
                probs = out.logits[0, :, :n].float().sigmoid().cpu().numpy()
                boxes = out.pred_boxes[0].float().cpu().numpy()
                dets += decode_chunk(probs, boxes, chunk, width, height, c.box_threshold,
                                     c.text_threshold)
        return [d for d in per_label_nms(dets, c.nms_iou) if d.score >= c.min_score]
