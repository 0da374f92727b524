"""JSON columns as they are read back: whatever one row holds, a read of it never fails.

Values stored through this service are finite, Unicode and shallow already (specs and results are
validated before they are stored). A row written by hand, by a bug or by an older version may not
be: such a value is made safe here, once, as the row is loaded, so no reader pays for the check
of values that need none.
"""

from __future__ import annotations

import json
import math
from typing import Any

from app.core.specs import escaped

UNREADABLE = {"unreadable": "a stored value this service cannot read back (not JSON, or not an object)"}
MAX_DEPTH = 32
"""Deeper than this is cut (pydantic's serializer refuses about 255 levels)."""


def load_stored_json(stored: str | bytes) -> Any:
    """The engine's JSON deserializer: ``json.loads``, made safe where the text says it may need it."""
    try:
        text = stored.decode() if isinstance(stored, bytes) else stored  # psycopg hands over bytes
        value = json.loads(text)
    except (RecursionError, ValueError):
        return dict(UNREADABLE)
    if plainly_safe(text):
        return value
    return readable(value)


def plainly_safe(text: str) -> bool:
    """No surrogate escape, no NaN or Infinity, and too few brackets to nest deep: true of nearly every row,
    and cheap to tell (each check is one pass in C); a row it is not true of is walked by ``readable``."""
    return (
        "\\ud" not in text.lower()
        and "NaN" not in text
        and "Infinity" not in text
        and text.count("{") + text.count("[") <= MAX_DEPTH
    )


def readable(value: Any, depth: int = 0) -> Any:
    """Lone surrogates escaped, numbers that are not finite made null, what nests deeper than MAX_DEPTH cut."""
    if isinstance(value, str):
        return escaped(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict | list) and depth >= MAX_DEPTH:
        return "(nested too deep to show)"
    if isinstance(value, dict):
        return {escaped(str(k)): readable(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list):
        return [readable(v, depth + 1) for v in value]
    return value
