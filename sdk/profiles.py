"""Task profiles: the label list a task needs (seed §3.1.1), made once per task and cached as a
versioned YAML file under ``configs/profiles/<task>.yaml`` so the edge never needs the network.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from discover.sdk.errors import DiscoverError
from discover.sdk.resources import config_path
from discover.sdk.topics import check_name

PROFILE_FORMAT = "discover-task-profile"
PROFILE_VERSION = 1
PROFILES_ENV = "DISCOVER_PROFILES_DIR"
REPO_PROFILES = config_path("profiles")


@dataclass
class TaskProfile:
    task: str
    labels: list[str]
    description: str = ""
    made_by: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None


def normalise_labels(labels: list[Any]) -> list[str]:
    """Lower-case, trimmed, single-spaced, de-duplicated, order kept."""
    seen: dict[str, None] = {}
    for raw in labels:
        if not isinstance(raw, str):
            continue
        label = " ".join(raw.strip().lower().split())
        if label:
            seen.setdefault(label, None)
    return list(seen)


def profile_dirs() -> list[Path]:
    extra = os.environ.get(PROFILES_ENV)
    return ([Path(p) for p in extra.split(os.pathsep) if p] if extra else []) + [REPO_PROFILES]


def known_tasks() -> list[str]:
    return sorted({p.stem for d in profile_dirs() if d.is_dir() for p in d.glob("*.yaml")})


def load_profile_file(path: Path) -> TaskProfile:
    """Read and validate one profile file."""
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as e:
        raise DiscoverError(f"cannot read task profile {path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise DiscoverError(f"task profile {path} is not UTF-8 text; "
                            "fix the file or regenerate it with 'discover profile'") from None
    except yaml.YAMLError as e:
        raise DiscoverError(f"task profile {path} is not valid YAML ({e.__class__.__name__}); "
                            "fix the file or regenerate it with 'discover profile'") from None
    if not isinstance(data, dict) or data.get("format") != PROFILE_FORMAT:
        raise DiscoverError(f"{path} is not a task profile (needs 'format: {PROFILE_FORMAT}'); "
                            "regenerate it with 'discover profile'")
    if data.get("version") != PROFILE_VERSION:
        raise DiscoverError(f"task profile {path} has version {data.get('version')!r}, "
                            f"this SDK reads version {PROFILE_VERSION}")
    labels = data.get("labels")
    if not isinstance(labels, list) or not normalise_labels(labels):
        raise DiscoverError(f"task profile {path} needs a non-empty 'labels' list of strings")
    task = str(data.get("task") or path.stem)
    return TaskProfile(task=check_name(task, "task name"), labels=normalise_labels(labels),
                       description=str(data.get("description", "")),
                       made_by=dict(data.get("made_by") or {}), path=path)


def load_profile(task: str) -> TaskProfile:
    """The profile of ``task`` from the profile directories; a clear error if there is none."""
    check_name(task, "task name")
    for d in profile_dirs():
        p = d / f"{task}.yaml"
        if p.is_file():
            return load_profile_file(p)
    raise DiscoverError(
        f"unknown task '{task}'; known tasks: {', '.join(known_tasks()) or 'none'} "
        f"(make one with: discover profile --task {task} --description '...')"
    )
