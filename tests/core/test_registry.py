"""Look-up by name fails loudly, naming what is known; a name is registered once."""

from __future__ import annotations

import pytest

from app.core.registry import Registry, UnknownName


def test_an_unknown_name_raises_naming_the_known_ones() -> None:
    shapes: Registry[int] = Registry("shape")
    shapes.add("square", 4)
    shapes.add("triangle", 3)
    assert shapes["square"] == 4 and "triangle" in shapes and "circle" not in shapes
    with pytest.raises(UnknownName, match=r"^unknown shape 'circle'; known: square, triangle$") as caught:
        shapes["circle"]
    assert caught.value.known == ["square", "triangle"] and isinstance(caught.value, LookupError)


def test_a_name_registered_twice_is_a_mistake_caught_at_import() -> None:
    things: Registry[int] = Registry("thing")

    @things.register("one", "uno")
    def one() -> int:
        return 1

    assert things.names() == ["one", "uno"] and things["uno"] is one
    with pytest.raises(ValueError, match="'one' is registered twice"):
        things.add("one", 1)
