"""One registry type for everything conf picks by name: scorers, encoders, strategies, readers, defect makers.

    SCORERS = Registry("scorer")

    @SCORERS.register("clarity")
    class Clarity(Scorer): ...

    SCORERS.get("clarity")      # the class; an unknown name raises UnknownNameError listing the known ones

A name is registered once: a second, different object under the same name raises ValueError (registering the same
object again is a no-op, so a module imported twice does not fail). A registry is a read-only Mapping in
registration order (`list(registry)`, `name in registry`, `registry[name]`); `names()` is sorted, for messages.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class UnknownNameError(KeyError, ValueError):
    """An unregistered name. Both a KeyError (a lookup failed) and a ValueError (a bad conf value)."""

    def __str__(self) -> str:  # KeyError would print the message's repr
        return str(self.args[0]) if self.args else ""


class Registry(Mapping[str, T], Generic[T]):
    """Name → object, filled by `register`; `kind` names the objects in error messages ("scorer", ...)."""

    def __init__(self, kind: str, plural: str | None = None) -> None:
        self.kind = kind
        self.plural = plural if plural is not None else f"{kind}s"
        self._items: dict[str, T] = {}

    @classmethod
    def of(cls, kind: str, items: Mapping[str, T], plural: str | None = None) -> Registry[T]:
        """A registry filled from `items`, in their order (where the order means something, e.g. random streams)."""
        registry: Registry[T] = cls(kind, plural)
        for name, obj in items.items():
            registry.add(name, obj)
        return registry

    def add(self, name: str, obj: T) -> T:
        if not isinstance(name, str) or not name:
            raise ValueError(f"a {self.kind} needs a non-empty string name, got {name!r}")
        if name in self._items and self._items[name] is not obj:
            raise ValueError(f"{self.kind} name {name!r} is already registered by {_describe(self._items[name])}")
        self._items[name] = obj
        return obj

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: register the decorated object under `name`."""

        def decorator(obj: T) -> T:
            return self.add(name, obj)

        return decorator

    def get(self, name: str) -> T:  # type: ignore[override]
        """The object registered as `name`; an unknown name raises UnknownNameError (no silent default)."""
        return self[name]

    def names(self) -> list[str]:
        return sorted(self._items)

    def __getitem__(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise UnknownNameError(f"unknown {self.kind} {name!r}; registered {self.plural}: {self.names()}") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {list(self._items)})"


def _describe(obj: Any) -> str:
    return getattr(obj, "__qualname__", None) or repr(obj)
