"""What every ``trainjobs`` command shares: the consoles, the common options, reading a spec file."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from trainjobs.client import Client

PLAIN_WIDTH = 160
"""Tables' width when the output is not a terminal (a file, a pipe): wide enough not to wrap."""
out = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else PLAIN_WIDTH)
err = Console(stderr=True, highlight=False)

ServerOpt = Annotated[str | None, typer.Option("--server", help="Default: TRAINJOBS_SERVER, then `trainjobs login`'s.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON (for scripts).")]
EXIT_CODES = {"succeeded": 0, "failed": 1, "cancelled": 2}
"""A command that follows a job (or a sweep) to its end exits with its status's code."""


def client(server: str | None = None) -> Client:
    return Client(server)


def print_json(value: Any) -> None:
    out.print_json(json.dumps(value, default=str)) if out.is_terminal else print(json.dumps(value, default=str))


def fail(message: str, code: int = 1) -> typer.Exit:
    err.print(f"error: {message}", markup=False)
    return typer.Exit(code)


def read_spec(file: str, what: str = "one job") -> dict[str, Any]:
    """A job (or sweep) body from a JSON or YAML file, or ``-`` for standard input."""
    text = sys.stdin.read() if file == "-" else Path(file).read_text()
    try:
        body = json.loads(text)
    except ValueError:
        import yaml

        try:
            body = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise fail(f"{file} is neither JSON nor YAML: {exc}") from None
    if not isinstance(body, dict):
        raise fail(f"{file} must hold {what} (an object), not {type(body).__name__}")
    return body


def set_path(body: dict[str, Any], assignment: str) -> None:
    """``train.lr=0.01``: the value as JSON where it reads as JSON (numbers, true, [1, 2]), else as text."""
    path, sep, raw = assignment.partition("=")
    if not sep or not path:
        raise fail(f"--set {assignment!r}: write PATH=VALUE, e.g. train.lr=0.01")
    try:
        value = json.loads(raw)
    except ValueError:
        value = raw
    keys = path.split(".")
    node = body
    for key in keys[:-1]:
        child = node.get(key)
        if not isinstance(child, dict):
            child = node[key] = {}
        node = child
    node[keys[-1]] = value
