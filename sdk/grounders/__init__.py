"""Grounders, chosen by ``grounder.type`` in the config. One import line per backend."""

from discover.sdk.grounders import grounding_dino, motion, nanodet, ssd_oid  # noqa: F401
from discover.sdk.grounders.base import ANY_OBJECT, GROUNDERS, Grounder, GrounderConfig

__all__ = ["ANY_OBJECT", "GROUNDERS", "Grounder", "GrounderConfig"]
