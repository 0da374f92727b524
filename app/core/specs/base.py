"""What every spec model shares: unknown fields refused, text without NUL, the names a union accepts."""

from __future__ import annotations

import math
import typing
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict

Shape = tuple[int, int, int]
"""(channels, height, width) of an image."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


def storable_text(value: str) -> str:
    """Text every database stores: no NUL character, no lone UTF-16 surrogate (valid JSON, not valid Unicode)."""
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode text: it holds a lone surrogate (such as \\ud800)") from None
    return value


Text = Annotated[str, AfterValidator(storable_text)]


def escaped(value: str) -> str:
    """``value`` made encodable for a message: a lone surrogate becomes its escape, ``\\ud800``."""
    return value.encode("utf-8", "backslashreplace").decode("utf-8")


def check_json(value: object, where: str, max_depth: int, depth: int = 0) -> None:
    """Finite numbers, 64-bit integers, Unicode text without NUL, at most ``max_depth`` deep: PostgreSQL's
    JSON refuses the rest, and every reader of the row would pay for the rest. ValueError naming the place."""
    if depth > max_depth:
        raise ValueError(f"{where} nests deeper than {max_depth} levels")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{where} holds {value}; send finite numbers (or null)")
    if isinstance(value, int) and not -(2**63) <= value < 2**63:
        raise ValueError(f"{where} holds an integer beyond 64 bits; send a float (or a string)")
    if isinstance(value, str):
        try:
            storable_text(value)
        except ValueError as exc:
            raise ValueError(f"{where}: a string that {exc}") from None
    if isinstance(value, dict):
        for key, item in value.items():
            check_json(key, f"{where}.{escaped(key)} (a key)", max_depth, depth + 1)
            check_json(item, f"{where}.{escaped(key)}", max_depth, depth + 1)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            check_json(item, f"{where}[{i}]", max_depth, depth + 1)


def literal_names(union: Any, field: str) -> list[str]:
    """The values the ``Literal`` field ``field`` takes across the members of a (discriminated) union."""
    members = typing.get_args(union)
    if members and typing.get_origin(union) is Annotated:
        members = typing.get_args(members[0])
    names: list[str] = []
    for member in members or (union,):
        annotation = member.model_fields[field].annotation
        assert typing.get_origin(annotation) is Literal, f"{member.__name__}.{field} is not a Literal"
        names += [str(v) for v in typing.get_args(annotation)]
    return names
