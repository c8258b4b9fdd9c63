"""The ``discover`` command line, demo, local broker and record/replay."""

import os

# torch's OpenMP threads spin while waiting; on a small busy gateway CPU that makes a 2-thread
# forward pass tens of times slower than 1 thread. Passive waiting fixes it (set before any
# torch import; a user's own setting wins).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
