"""Where the server and token come from: the argument, else ``TRAINJOBS_SERVER``/``TRAINJOBS_TOKEN``, else
the file ``trainjobs login`` writes (``~/.config/trainjobs/credentials.json``, mode 0600)."""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

DEFAULT_SERVER = "http://127.0.0.1:8000"


def credentials_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "trainjobs" / "credentials.json"


@dataclass(frozen=True)
class Credentials:
    server: str
    token: str | None


def load_file() -> dict[str, str]:
    try:
        found = json.loads(credentials_path().read_text())
    except (OSError, ValueError):
        return {}
    return {k: v for k, v in found.items() if isinstance(v, str)} if isinstance(found, dict) else {}


def resolve(server: str | None = None, token: str | None = None) -> Credentials:
    """The flag beats the environment, which beats the file."""
    saved = load_file()
    server = (server or os.environ.get("TRAINJOBS_SERVER") or saved.get("server") or DEFAULT_SERVER).rstrip("/")
    # The saved token is for the saved server only: never sent to another one.
    same_server = saved.get("server", "").rstrip("/") == server
    token = token or os.environ.get("TRAINJOBS_TOKEN") or (saved.get("token") if same_server else None)
    return Credentials(server, token)


def save(server: str, token: str) -> Path:
    """Write the file (mode 0600 from the start: the token is never readable by others, even briefly)."""
    path = credentials_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, name = tempfile.mkstemp(prefix=".credentials-", dir=path.parent)  # mkstemp makes it 0600
    with os.fdopen(fd, "w") as f:
        json.dump({"server": server.rstrip("/"), "token": token}, f)
    os.replace(name, path)
    return path


def forget() -> bool:
    """Remove the file; False if there was none."""
    try:
        credentials_path().unlink()
    except FileNotFoundError:
        return False
    return True
