"""DISCOVER edge-camera SDK: the one import package of the ``discover-sdk`` distribution.

::

    discover.sdk    the library edge and sink share (packets, codecs, grounders, transport)
    discover.edge   the camera agent
    discover.sink   the sink pipeline, composers and task models
    discover.bench  the benchmarks behind the README's figures
    discover.train  codec and control-module training, ONNX export
    discover.cli    the ``discover`` command

In the repository ``sdk/``, ``edge/``, ``sink/`` and ``configs/`` sit at the top level, as the
product card lays them out; the wheel places them inside this package (``package-dir`` in
``setup.py``). A source checkout finds them the same way through the lines below, so the same
import names work installed, editable, or straight from a clone.
"""

import os
from pathlib import Path

# torch's OpenMP threads spin while waiting; on a small busy gateway CPU that makes a 2-thread
# forward pass tens of times slower than 1 thread. Passive waiting fixes it (set before any
# torch import; a user's own setting wins).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

_CHECKOUT = Path(__file__).resolve().parent.parent
if not (Path(__file__).parent / "sdk").is_dir() and (_CHECKOUT / "sdk" / "__init__.py").is_file() \
        and (_CHECKOUT / "setup.py").is_file():
    __path__.append(str(_CHECKOUT))  # noqa: F821  (a package's __path__)
