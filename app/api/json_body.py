"""Request bodies validated by pydantic-core straight from the bytes, for the hot worker routes.

FastAPI decodes a JSON body with the standard library, then validates the Python objects; for a
batch of 1,000 metric points that was a third of the request's cost. ``json_body(Model)`` is a
dependency that validates the raw bytes in one pass and fails the same way (422, each error
located under "body"; a body not sent as JSON is refused, as FastAPI does). JSON that pydantic-core's
parser refuses but the standard library reads (a lone surrogate escape, ``"\\ud800"``) is validated
again from the standard library's objects, so the error names the field. ``openapi_body(Model)``
documents the body as FastAPI would have.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)


def json_body(model: type[M]) -> Callable[[Request], Awaitable[M]]:
    async def parse(request: Request) -> M:
        media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media_type and media_type != "application/json" and not media_type.endswith("+json"):
            msg = f"the body must be JSON (Content-Type: application/json), not {media_type}"
            raise RequestValidationError([{"type": "content_type", "loc": ("body",), "msg": msg}])
        raw = await request.body()
        try:
            return model.model_validate_json(raw)
        except ValidationError as exc:
            errors = exc.errors(include_url=False)
        decoded = None
        if any(e["type"] == "json_invalid" for e in errors):
            try:
                decoded = json.loads(raw)
                return model.model_validate(decoded)
            except ValidationError as exc:
                errors = exc.errors(include_url=False)
            except (
                ValueError,
                RecursionError,
            ):  # not JSON for the standard library either: pydantic-core's error stands
                pass
        raise RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in errors], body=decoded)

    parse.__name__ = f"parse_{model.__name__}"
    return parse


def _inline(node: Any, defs: dict[str, Any]) -> Any:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            return _inline(defs[ref.removeprefix("#/$defs/")], defs)
        return {key: _inline(value, defs) for key, value in node.items()}
    if isinstance(node, list):
        return [_inline(item, defs) for item in node]
    return node


def openapi_body(model: type[BaseModel], description: str | None = None) -> dict[str, Any]:
    """``openapi_extra`` for a route whose JSON body ``json_body`` parses: the model's schema, inlined."""
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})
    body: dict[str, Any] = {"required": True, "content": {"application/json": {"schema": _inline(schema, defs)}}}
    if description:
        body["description"] = description
    return {"requestBody": body}
