"""Named registries for the pluggable parts of promptrec.

Each unit (a loader, an indexer, a task, a metric, a recommender) registers itself in its own
module with a decorator, and the package that holds the units imports them in its ``__init__``
(``promptrec.data`` its loaders, ``promptrec.indexing`` its indexers, ``promptrec.models`` its
model packages, each of which imports its own), so that importing the package fills its registry.
A lookup only needs that package imported, never a list of module paths. Looking up a name that is
not registered fails with the list of names that are.
"""

from __future__ import annotations

from typing import Callable, Generic, Iterator, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            if name in self._entries:
                raise ValueError(f"duplicate {self.kind} name {name!r}")
            self._entries[name] = obj
            return obj

        return deco

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            known = ", ".join(sorted(self._entries)) or "(none)"
            raise KeyError(f"unknown {self.kind} {name!r}; known: {known}") from None

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
