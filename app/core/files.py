"""Durable file moves shared by the service's artifact store and the worker's checkpoint writer."""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def fsync_path(path: Path) -> None:
    """fsync a file or a folder by its path (a folder: so that a rename into it survives a crash)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def link_or_copy(source: Path, target: Path) -> None:
    """Make ``target`` a second name of ``source``: a hard link, or a copy where links fail (another disk)."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def replace_durably(tmp: Path, target: Path) -> None:
    """Rename a complete, fsynced ``tmp`` over ``target`` and make the rename itself durable."""
    os.replace(tmp, target)
    fsync_path(target.parent)
