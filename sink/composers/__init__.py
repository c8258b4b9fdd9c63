"""Composers, chosen by ``sink.composer.type``. One import line per backend."""

from discover.sink.composers import background, diffusion, direct, inpaint  # noqa: F401
from discover.sink.composers.base import COMPOSERS, Composer, ComposerConfig

__all__ = ["COMPOSERS", "Composer", "ComposerConfig"]
