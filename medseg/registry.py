"""One small string-keyed registry, shared by model families, tasks, kernel backends and dataset
recipes.

A registry never imports what it holds: entries register themselves when their module is imported
(the package ``__init__`` imports the built-in ones; plug-ins outside medseg are imported by
``medseg.plugins``). Looking an entry up first loads the plug-ins, so a lab's own family or task
is found by name like a built-in one."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from medseg.errors import MedsegError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(
        self, kind: str, error: type[Exception] = MedsegError, casefold: bool = False, loader: Callable[[], None] | None = None,
        scope: str = "",
    ):
        """``kind`` names the entries in messages ("model", "task"; ``scope`` is added after the
        name, e.g. "for selective_scan"); ``error`` is raised for an unknown name; ``casefold``
        makes lookups case-insensitive; ``loader`` imports the built-in entries (for registries
        whose package is not imported by their users). Entries keep their registration order,
        which is an order of preference where that matters (kernel backends)."""
        self.kind, self.error, self.casefold, self.loader, self.scope = kind, error, casefold, loader, scope
        self._entries: dict[str, T] = {}

    def _key(self, name: str) -> str:
        return name.casefold() if self.casefold else name

    def register(self, name: str, entry: T) -> T:
        key = self._key(name)
        if key in self._entries:
            raise ValueError(f"{self.kind} '{name}' is registered twice")
        self._entries[key] = entry
        return entry

    def _load(self) -> None:
        from medseg.plugins import load_plugins

        if self.loader is not None:
            self.loader()
        load_plugins()

    def get(self, name: str) -> T:
        self._load()
        try:
            return self._entries[self._key(name)]
        except KeyError:
            scope = f" {self.scope}" if self.scope else ""
            raise self.error(f"unknown {self.kind} '{name}'{scope} (registered: {', '.join(self.names()) or 'none'})") from None

    def __contains__(self, name: str) -> bool:
        self._load()
        return self._key(name) in self._entries

    def names(self) -> list[str]:
        """Registered names, in registration order."""
        self._load()
        return list(self._entries)

    def values(self) -> list[T]:
        """Entries, in registration order."""
        self._load()
        return list(self._entries.values())

    def __iter__(self) -> Iterator[T]:
        return iter(self.values())
