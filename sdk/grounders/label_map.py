"""Profile labels onto a fixed-vocabulary detector's classes, through a YAML map of synonyms
(``configs/label-maps/*.yaml``), shared by the detector-backed grounders."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import yaml
from discover.sdk.errors import DiscoverError

log = logging.getLogger(__name__)


def load_label_map(path: Path, classes: Sequence[str]) -> dict[str, int]:
    """synonym or class name -> class index."""
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise DiscoverError(f"cannot read label map {path} ({e.__class__.__name__}); "
                            "fix it or point grounder.label_map at a valid file") from None
    index = {c: i for i, c in enumerate(classes)}
    out = dict(index)
    for cls, synonyms in raw.items():
        if cls not in index or not isinstance(synonyms, list):
            raise DiscoverError(f"label map {path}: '{cls}' is not a detector class with a "
                                "list of synonyms")
        for s in synonyms:
            out.setdefault(" ".join(str(s).lower().split()), index[cls])
    return out


class LabelPlan:
    """class index -> the profile labels its boxes answer for, the box's label first: the
    class's own name when the profile has it, else the earliest synonym in profile order; a
    child class (``parents``) also answers for its parent's labels (a Car box for 'vehicle').
    Cached per label list; how many labels no class answers for is logged once per list (one
    line; ``discover ground --labels`` lists them)."""

    def __init__(self, synonyms: Mapping[str, int], classes: Sequence[str], detector: str,
                 parents: Mapping[int, int] | None = None) -> None:
        self.synonyms, self.classes, self.detector = synonyms, classes, detector
        self.parents = dict(parents or {})
        self._for: tuple[str, ...] | None = None
        self._plan: dict[int, tuple[str, ...]] = {}
        self.unmapped: list[str] = []  # of the last label list

    def __call__(self, labels: Sequence[str]) -> dict[int, tuple[str, ...]]:
        key = tuple(labels)
        if key == self._for:
            return self._plan
        plan: dict[int, list[str]] = {}
        unmapped = []
        for label in labels:
            norm = " ".join(label.lower().split())
            c = self.synonyms.get(norm)
            if c is None:
                unmapped.append(label)
            elif norm == self.classes[c]:
                plan.setdefault(c, []).insert(0, label)
            else:
                plan.setdefault(c, []).append(label)
        for child, parent in self.parents.items():
            for label in plan.get(parent, ()):
                names = plan.setdefault(child, [])
                if label not in names:
                    names.append(label)
        if unmapped:
            log.warning("%s grounder: %d of %d profile labels have no class of this detector and "
                        "are not grounded; list them with 'discover ground --labels --task T "
                        "--grounder %s'", self.detector, len(unmapped), len(labels),
                        self.detector)
        self.unmapped = unmapped
        self._for, self._plan = key, {c: tuple(v) for c, v in plan.items()}
        return self._plan
