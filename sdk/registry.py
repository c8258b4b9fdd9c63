"""Name -> backend registries.

Backends (grounders, codecs, composers, task models) register under a short key with a pydantic
config class whose ``type`` field is that key, so a deployment file selects a backend by name and
the merged config schema documents every backend's options::

    @GROUNDERS.register
    class MotionGrounder(Grounder):
        key = "motion"
        Config = MotionConfig          # MotionConfig.type: Literal["motion"]

Adding a backend is one file plus one import line in its package ``__init__``.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Generic, TypeVar, Union

from discover.sdk.errors import DiscoverError
from pydantic import BaseModel, ConfigDict, Field, ValidationError


class BackendConfig(BaseModel):
    """Base of every backend config: strict keys, ``type`` selects the backend."""

    model_config = ConfigDict(extra="forbid")
    type: str


class Backend:
    """Base of every registered backend."""

    key: ClassVar[str]
    Config: ClassVar[type[BackendConfig]]


B = TypeVar("B", bound=Backend)
_BACKEND_KEYS: set[str] = set()  # pydantic puts the union tag in error paths; we drop it


class Registry(Generic[B]):
    """A named set of backends of one kind (``kind`` appears in error messages)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, type[B]] = {}

    def register(self, cls: type[B]) -> type[B]:
        """Class decorator: add ``cls`` under ``cls.key``."""
        key = cls.key
        if key in self._items and self._items[key] is not cls:
            raise RuntimeError(f"{self.kind} '{key}' registered twice")
        type_field = cls.Config.model_fields.get("type")
        if type_field is None or type_field.default != key:
            raise RuntimeError(f"{cls.__name__}.Config.type must default to '{key}'")
        self._items[key] = cls
        _BACKEND_KEYS.add(key)
        return cls

    def keys(self) -> list[str]:
        return sorted(self._items)

    def get(self, key: str) -> type[B]:
        try:
            return self._items[key]
        except KeyError:
            raise DiscoverError(
                f"unknown {self.kind} '{key}'; choose one of: {', '.join(self.keys())}"
            ) from None

    def config_union(self) -> Any:
        """The discriminated union of all registered config classes (for config models)."""
        configs = tuple(cls.Config for cls in self._items.values())
        if len(configs) == 1:
            return configs[0]
        return Annotated[Union[configs], Field(discriminator="type")]  # noqa: UP007

    def parse_config(self, data: dict[str, Any] | BackendConfig | str) -> BackendConfig:
        """Validate a config dict (or a bare key) for this registry, with a one-line error."""
        if isinstance(data, BackendConfig):
            return data
        if isinstance(data, str):
            data = {"type": data}
        key = data.get("type")
        if not isinstance(key, str):
            raise DiscoverError(f"{self.kind} config needs a 'type' ({', '.join(self.keys())})")
        cls = self.get(key)
        try:
            return cls.Config.model_validate(data)
        except ValidationError as e:
            raise DiscoverError(f"bad {self.kind} '{key}' config: {first_error(e)}") from None

    def create(self, config: dict[str, Any] | BackendConfig | str, **kwargs: Any) -> B:
        """Build the backend a config names."""
        cfg = self.parse_config(config)
        return self.get(cfg.type)(cfg, **kwargs)  # type: ignore[call-arg]


def first_error(e: ValidationError) -> str:
    """One line for a pydantic error: the dotted field path and what is wrong with it."""
    err = e.errors()[0]
    loc = [p for p in err.get("loc", ()) if not (isinstance(p, str) and p in _BACKEND_KEYS)]
    where = ".".join(str(p) for p in loc) or "value"
    if err.get("type") == "union_tag_not_found":
        return f"{where}: needs a 'type' naming the backend"
    return f"{where}: {err.get('msg', 'invalid')}" + (
        f" (got {err['input']!r})" if "input" in err and not isinstance(err["input"], dict) else ""
    )
