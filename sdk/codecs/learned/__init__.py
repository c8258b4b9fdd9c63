"""The learned region codec (DISCOVER seed §3.2, §3.4).

- ``codec.py``: the ``learned`` backend of the codec interface (light to import: torch and
  compressai load when a codec is created)
- ``model.py``: the network (ELIC transforms, hyperprior, M(z), g_s heads)
- ``entropy.py``: exact fixed-point probabilities, rANS substreams, payload framing
- ``checkpoint.py``: ``save_pretrained`` / ``from_pretrained`` folders and the content hash
- ``training.py``: stage I / stage II training (``discover/train/codec.py``)
"""

from discover.sdk.codecs.learned.codec import LearnedCodec, LearnedConfig

__all__ = ["LearnedCodec", "LearnedConfig"]
