"""How a child's output becomes log lines: split on \\n and \\r, cut at 8 KiB, whatever the reads' boundaries."""

from __future__ import annotations

import json

from worker.logs import MAX_LINE_BYTES, LineSplitter


def split(*chunks: bytes) -> list[str]:
    splitter = LineSplitter()
    lines = [line for chunk in chunks for line in splitter.feed(chunk)]
    return lines + splitter.flush()


def test_lines_end_at_newlines_and_carriage_returns_and_a_crlf_is_one_end() -> None:
    assert split(b"one\ntwo\r\nthree\rfour") == ["one", "two", "three", "four"]


def test_empty_lines_are_left_out() -> None:
    assert split(b"\n\na\n\n\r\nb\n") == ["a", "b"]


def test_a_progress_bar_redrawn_with_carriage_returns_becomes_one_line_per_update() -> None:
    bar = b"".join(f"\r{p:3d}%|{'#' * (p // 10)}".encode() for p in (10, 50, 100)) + b"\n"
    assert split(bar) == [" 10%|#", " 50%|#####", "100%|##########"]  # no empty line before the first


def test_a_line_split_across_reads_and_a_crlf_split_across_reads_come_out_whole() -> None:
    assert split(b"hal", b"f a line\r", b"\nnext\n") == ["half a line", "next"]


def test_a_line_over_8_kib_is_cut_there_and_the_next_line_is_whole() -> None:
    long = b"x" * (MAX_LINE_BYTES * 3)
    lines = split(long[:5000], long[5000:], b"\nafter\n")
    assert lines == ["x" * MAX_LINE_BYTES, "after"]


def test_bytes_that_are_not_utf8_and_nul_bytes_are_replaced_not_fatal() -> None:
    assert split(b"caf\xc3\xa9 \xff\x00!\n") == ["café \ufffd\ufffd!"]


def test_text_the_service_could_not_store_is_made_storable_and_batches_stay_under_the_body_limit() -> None:
    from worker.logs import JobLog, storable

    assert storable("bad \ud800 surrogate and \x00 nul") == "bad ? surrogate and ? nul"
    long = storable("é" * 10_000)  # 20,000 bytes of UTF-8
    assert len(long.encode()) <= MAX_LINE_BYTES and set(long) == {"é"}
    log = JobLog()
    for _ in range(1000):
        log.add("stdout", "\x1b" * MAX_LINE_BYTES)  # escapes grow sixfold as JSON
    batch = log.batch()
    assert 0 < len(batch) < 1000
    assert sum(len(json.dumps(line["text"])) for line in batch) <= 2 * 1024 * 1024
