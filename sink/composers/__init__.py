"""Composers, chosen by ``sink.composer.type``. One import line per backend."""

from sink.composers import background, diffusion, direct, inpaint  # noqa: F401
from sink.composers.base import COMPOSERS, Composer, ComposerConfig

__all__ = ["COMPOSERS", "Composer", "ComposerConfig"]
