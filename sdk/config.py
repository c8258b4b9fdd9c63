"""Deployment configuration plumbing: one YAML file, then ``DISCOVER_*`` environment variables,
then command-line ``--set key.path=value`` (and named flags), validated by a pydantic model with
one-line errors.

Environment keys nest with double underscores: ``DISCOVER_BROKER__URL`` sets ``broker.url``,
``DISCOVER_EDGE__CAMERAS__0__SOURCE`` sets ``edge.cameras[0].source``. Only keys that exist in
the model are taken, so other ``DISCOVER_*`` variables (e.g. ``DISCOVER_BROKER_PASSWORD``, which
is a secret and never a config key) pass untouched.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePath
from typing import Any, TypeVar

import yaml
from discover.sdk.errors import DiscoverError
from discover.sdk.registry import first_error
from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)
ENV_PREFIX = "DISCOVER_"
MAX_LIST_INDEX = 1024  # --set edge.cameras.100000000.source=x must not build a huge list
MAX_YAML_NODES = 100_000  # values after aliases are expanded: a YAML alias bomb is refused


def _expanded(node: yaml.Node, memo: dict[int, int]) -> int:
    """Values in a composed YAML node once every alias is expanded (memoised: linear time)."""
    key = id(node)
    if key not in memo:
        memo[key] = 0  # a recursive alias counts as one value, not forever
        children = node.value if isinstance(node, yaml.SequenceNode) else (
            [v for kv in node.value for v in kv] if isinstance(node, yaml.MappingNode) else [])
        memo[key] = 1 + sum(_expanded(c, memo) for c in children)
    return memo[key]


def safe_yaml(text: str) -> Any:
    """``yaml.safe_load`` that first refuses a document expanding to more than
    MAX_YAML_NODES values (ValueError)."""
    node = yaml.compose(text, Loader=yaml.SafeLoader)
    if node is not None and _expanded(node, {}) > MAX_YAML_NODES:
        raise ValueError(f"YAML expands to more than {MAX_YAML_NODES} values (aliases)")
    return yaml.safe_load(text)


def read_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    try:
        data = safe_yaml(p.read_text())
    except OSError as e:
        raise DiscoverError(f"cannot read config {p}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise DiscoverError(f"config {p} is not UTF-8 text; pass a YAML file") from None
    except ValueError as e:  # an alias bomb
        raise DiscoverError(f"config {p}: {e}; write the repeated values out") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise DiscoverError(f"config {p} is not valid YAML{where}; fix the file") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise DiscoverError(f"config {p} must be a mapping of keys to values")
    return data


def _backend_choice(value: Any) -> bool:
    """A named flag that only picks a backend (``--codec video``: ``{"type": "video"}``)."""
    return isinstance(value, dict) and set(value) == {"type"}


def _drop_other_backend(data: dict[str, Any], path: Sequence[str], kind: str) -> None:
    """Before ``--set`` applies, drop the section at ``path`` if the file or the environment
    gave it for another backend than ``kind``, so that ``--codec video --set
    edge.codec.quality=2`` keeps the quality and no other backend's options are left over."""
    node: Any = data
    for key in path:
        node = node.get(key) if isinstance(node, dict) else None
    if isinstance(node, dict) and node.get("type", kind) != kind:
        set_path(data, path, {})


def set_path(data: dict[str, Any], path: Sequence[str], value: Any) -> None:
    """Set ``data[a][b][0][c] = value`` creating mappings (and extending lists) on the way."""
    node: Any = data
    for i, key in enumerate(path):
        last = i == len(path) - 1
        if isinstance(node, list):
            idx = int(key)
            if idx >= MAX_LIST_INDEX:
                raise DiscoverError(f"config list index {idx} in {'.'.join(path)} is too large "
                                    f"(at most {MAX_LIST_INDEX - 1}); number list items from 0")
            while len(node) <= idx:
                node.append({})
            if last:
                node[idx] = value
            else:
                node = node[idx]
            continue
        if last:
            node[key] = value
        else:
            nxt = node.get(key)
            if not isinstance(nxt, dict | list):
                nxt = [] if path[i + 1].isdigit() else {}
                node[key] = nxt
            node = nxt


_MISSING = object()


def _alternatives(tp: Any) -> list[Any]:
    """The types a field annotation allows: ``Annotated`` and unions (``X | None``) flattened."""
    from types import UnionType
    from typing import Annotated, Union, get_args, get_origin

    origin = get_origin(tp)
    if origin is Annotated:
        return _alternatives(get_args(tp)[0])
    if origin is Union or origin is UnionType:
        return [t for a in get_args(tp) for t in _alternatives(a)]
    return [tp]


def _field_type(model: type[BaseModel], path: Sequence[str]) -> Any:
    """The annotation a dotted path leads to (lists by index, dicts by any key, unions
    loosely), or ``_MISSING`` if it names no field of the model."""
    from typing import get_args, get_origin

    tp: Any = model
    for key in path:
        nxt: Any = _MISSING
        for alt in _alternatives(tp):
            origin = get_origin(alt)
            if isinstance(alt, type) and issubclass(alt, BaseModel):
                if key in alt.model_fields:
                    nxt = alt.model_fields[key].annotation
                    break
            elif origin in (list, tuple) and key.isdigit() and get_args(alt):
                nxt = get_args(alt)[0]
                break
            elif origin is dict and get_args(alt):
                nxt = get_args(alt)[1]
                break
        if nxt is _MISSING:
            return _MISSING
        tp = nxt
    return tp


def _has_path(model: type[BaseModel], path: Sequence[str]) -> bool:
    """Whether a dotted path names a field of the model (lists by index, unions loosely)."""
    return _field_type(model, path) is not _MISSING


def _parse_for(model: type[BaseModel], path: Sequence[str], text: str) -> Any:
    """Parse a command-line / environment value; a field that only takes text (``str``,
    paths) keeps it as written, so ``source=0`` (a webcam) or ``camera=42`` stay strings."""
    value = parse_value(text)
    alts = _alternatives(_field_type(model, path))
    if value is None and type(None) in alts:
        return None
    if all(isinstance(a, type) and issubclass(a, str | PurePath)
           for a in alts if a is not type(None)):
        return text
    return value


def parse_value(text: str) -> Any:
    """Command-line and environment values are YAML scalars or flow lists."""
    try:
        return safe_yaml(text) if text != "" else ""
    except yaml.YAMLError:
        return text
    except ValueError as e:
        raise DiscoverError(f"bad value {text[:40]!r}: {e}") from None


def env_overrides(model: type[BaseModel], environ: Mapping[str, str]) -> list[tuple[list[str], Any]]:
    out = []
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX):
            continue
        path = name[len(ENV_PREFIX):].lower().split("__")
        if _has_path(model, path):
            out.append((path, _parse_for(model, path, value)))
    return out


def load_config(
    model: type[M],
    path: str | Path | None = None,
    sets: Sequence[str] = (),
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> M:
    """File < environment < ``--set k=v`` < named flags (``overrides``, dotted keys)."""
    data = read_yaml(path) if path else {}
    for p, v in env_overrides(model, os.environ if environ is None else environ):
        set_path(data, p, v)
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    for key, value in overrides.items():
        if _backend_choice(value):
            _drop_other_backend(data, key.split("."), value["type"])
    for item in sets:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise DiscoverError(f"bad --set {item!r}: use --set key.path=value")
        if not _has_path(model, key.split(".")):
            raise DiscoverError(f"unknown config key {key!r} in --set; see 'discover config --schema'")
        set_path(data, key.split("."), _parse_for(model, key.split("."), value))
    for key, value in overrides.items():  # named flags win, a backend flag over --set too
        path = key.split(".")
        if _backend_choice(value):  # only the type: the section's options stay
            path, value = [*path, "type"], value["type"]
        set_path(data, path, value)
    try:
        return model.model_validate(data)
    except ValidationError as e:
        src = f" in {path}" if path else ""
        raise DiscoverError(f"bad config{src}: {first_error(e)}") from None
