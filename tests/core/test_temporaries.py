"""Which temporary files a start-up sweep removes (the real-process test: tests/hostile/test_storage.py)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from app.core.checkpoints import HOST, process_started, sweep_temporaries, temporary_prefix


def folder_of(tmp_path: Path) -> Path:
    folder = tmp_path / "jobs" / "7"
    folder.mkdir(parents=True)
    return folder


def test_a_file_of_an_earlier_process_with_this_pid_is_removed_and_this_process_files_are_kept(tmp_path: Path) -> None:
    """A restarted container's API is PID 1 again: the PID alone would call its predecessor's files live."""
    folder = folder_of(tmp_path)
    mine = folder / f"{temporary_prefix('upload')}abc"
    predecessor = folder / f".upload-{HOST}-{os.getpid()}.1-abc"  # same host, same PID, another start
    for path in (mine, predecessor):
        path.write_bytes(b"partial")
    assert sweep_temporaries(tmp_path) == 1
    assert mine.exists() and not predecessor.exists()


def test_a_download_link_to_an_old_checkpoint_of_another_host_is_young(tmp_path: Path) -> None:
    """Its age is the link's (ctime), not the day-old checkpoint's mtime it shares."""
    folder = folder_of(tmp_path)
    checkpoint = folder / "last-0123.pt"
    checkpoint.write_bytes(b"weights")
    two_days_ago = time.time() - 2 * 86400
    os.utime(checkpoint, (two_days_ago, two_days_ago))
    link = folder / ".download-otherhost-12.345-abc"
    os.link(checkpoint, link)
    assert sweep_temporaries(tmp_path) == 0
    assert link.exists()


def test_the_start_time_of_this_process_is_known() -> None:
    started = process_started(os.getpid())
    assert started is not None and started.isdigit() and started != "0"
    assert process_started(2**22 + 1) is None  # beyond Linux's largest PID
