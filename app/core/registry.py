"""Look-up by name that fails loudly: job kinds, archs, datasets, each mapped to the code that serves it.

A ``Registry`` replaces an if/else ladder whose last branch would quietly take anything new: an
unknown name raises ``UnknownName``, which names the known ones. Registries of code that needs
torch live in the worker (worker/training); this module has no dependencies of its own.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class UnknownName(LookupError):
    """A name no registry entry serves; the message lists the names that are known."""

    def __init__(self, what: str, name: str, known: list[str]) -> None:
        super().__init__(f"unknown {what} '{name}'; known: {', '.join(known) or 'none'}")
        self.what, self.name, self.known = what, name, known

    def __str__(self) -> str:
        return str(self.args[0])


class Registry(Generic[T]):
    """Named entries of one kind; ``registry[name]`` raises ``UnknownName`` for a name it lacks."""

    def __init__(self, what: str) -> None:
        self.what = what
        self._entries: dict[str, T] = {}

    def add(self, name: str, entry: T) -> T:
        if name in self._entries:
            raise ValueError(f"{self.what} '{name}' is registered twice")
        self._entries[name] = entry
        return entry

    def register(self, *names: str) -> Callable[[T], T]:
        """Decorator: register the function (or class) under each of ``names``."""

        def decorate(entry: T) -> T:
            for name in names:
                self.add(name, entry)
            return entry

        return decorate

    def __getitem__(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownName(self.what, str(name), self.names()) from None

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def names(self) -> list[str]:
        """The registered names, sorted (messages read the same whatever the import order)."""
        return sorted(self._entries)
