"""Package layout for setuptools (everything else is in pyproject.toml).

The repository keeps ``sdk/``, ``edge/``, ``sink/`` and ``configs/`` at the top level (the
product card's layout); the distribution installs them as ``discover.sdk``, ``discover.edge``,
``discover.sink`` and the data folder ``discover.configs``, so ``discover`` is its only
top-level import package.
"""

from setuptools import find_namespace_packages, setup

ROOTS = {"discover": "discover", "discover.sdk": "sdk", "discover.edge": "edge",
         "discover.sink": "sink", "discover.configs": "configs"}


def _packages() -> list[str]:
    found = []
    for name, folder in ROOTS.items():
        found.append(name)
        # namespace discovery so data folders (weights, checkpoints, profiles) ship too
        found += [f"{name}.{sub}" for sub in find_namespace_packages(folder)
                  if "__pycache__" not in sub and not sub.startswith(("bench.out", "out"))]
    return found


setup(
    package_dir=ROOTS,
    packages=_packages(),
    package_data={"": ["*.yaml", "*.json", "*.onnx", "*.mp4", "*.txt", "*.md", "*.safetensors",
                       "LICENSE*", "*.js", "*.css", "*.html", "*.conf", "*.acl", "*.png"]},
)
