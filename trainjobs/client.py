"""``Client`` and ``AsyncClient``: the service's public API from Python.

Each call is built once (``Call``: method, path, parameters, body) and sent by either client; the
answer is checked and typed the same way by both. A 4xx is raised at once as the exception of its
status (trainjobs/errors.py); a transient failure (no connection, 502, 503, 504) is retried with
capped backoff, honouring ``Retry-After``, for up to ``retry_seconds``. A submit carries an
idempotency key (a new one unless given), so its retry can never make a second job.
"""

from __future__ import annotations

import asyncio
import builtins
import hashlib
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from pydantic import BaseModel

from trainjobs.credentials import resolve
from trainjobs.errors import ServiceUnavailable, TrainjobsError, error_for
from trainjobs.models import Checkpoint, Job, LogLine, Sweep

TRANSIENT_STATUSES = frozenset({502, 503, 504})
TRANSIENT_ERRORS = (httpx.TransportError,)
UNSENT_ERRORS = (httpx.ConnectError, httpx.ConnectTimeout)
"""Failures before the request reached the service: safe to retry whatever it was."""


@dataclass(frozen=True)
class Call:
    method: str
    path: str
    params: dict[str, Any] = field(default_factory=dict)
    json: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    idempotent: bool | None = None
    """May it be sent twice? GETs and keyed submits may; a cancel, delete or new token only when
    the first never arrived (no connection) or was shed (503) before anything was done."""

    def may_retry(self, response: httpx.Response | None, error: Exception | None) -> bool:
        if self.idempotent if self.idempotent is not None else self.method == "GET":
            return True
        return isinstance(error, UNSENT_ERRORS) or (response is not None and response.status_code == 503)

    def request(self, http: httpx.Client | httpx.AsyncClient) -> httpx.Request:
        params = {k: v for k, v in self.params.items() if v is not None}
        return http.build_request(self.method, self.path, params=params, json=self.json, headers=self.headers)


def spec_json(spec: BaseModel | dict[str, Any]) -> dict[str, Any]:
    """A job spec as the service takes it: a dict as it is, a spec model as JSON without unset defaults."""
    if isinstance(spec, BaseModel):
        return spec.model_dump(mode="json", exclude_unset=True)
    return dict(spec)


def with_base(finetune: BaseModel | dict[str, Any], pretrain_id: int) -> dict[str, Any]:
    """The finetune, starting from job ``pretrain_id``'s encoder (it waits for that job to succeed)."""
    body = spec_json(finetune)
    model = dict(body.get("model") or {})
    model["init"] = {"from": "job", "job_id": pretrain_id}
    return {**body, "model": model}


def checked(response: httpx.Response) -> httpx.Response:
    if response.status_code >= 400:
        raise error_for(response)
    return response


def backoff(attempt: int, response: httpx.Response | None) -> float:
    """Seconds before retry ``attempt`` (0, 1, ...): the server's Retry-After if it gave one, else 0.25 s doubling to 5 s."""
    if response is not None:
        retry_after = response.headers.get("retry-after", "")
        if retry_after.isdigit():
            return min(float(retry_after), 30.0)
    return min(0.25 * 2.0**attempt, 5.0)


class Retrying:
    """One call's retries: how long to wait before the next try, or the error to raise instead."""

    def __init__(self, call: Call, server: str, seconds: float) -> None:
        self.call, self.server = call, server
        self.deadline, self.attempt = time.monotonic() + seconds, 0

    def pause(self, response: httpx.Response | None, error: Exception | None) -> float:
        wait = backoff(self.attempt, response)
        self.attempt += 1
        if self.call.may_retry(response, error) and time.monotonic() + wait < self.deadline:
            return wait
        if response is not None:
            raise error_for(response)
        raise ServiceUnavailable(f"cannot reach {self.server}: {error}") from error


def submit_call(
    spec: BaseModel | dict[str, Any], idempotency_key: str | None, name: str | None, priority: int | None
) -> Call:
    body = spec_json(spec)
    if name is not None:
        body["name"] = name
    if priority is not None:
        body["priority"] = priority
    key = idempotency_key or uuid.uuid4().hex
    return Call("POST", "/jobs", json=body, headers={"Idempotency-Key": key}, idempotent=True)


class Pages:
    """``GET /jobs`` a page at a time (both clients): the next call, and the jobs a page holds."""

    def __init__(
        self,
        status: str | None,
        kind: str | None,
        owner: str | None,
        limit: int | None,
        page_size: int,
        sweep: int | None = None,
    ) -> None:
        self.params: dict[str, Any] = {"status": status, "kind": kind, "owner": owner, "limit": page_size}
        self.params["sweep"] = sweep
        self.limit, self.seen, self.done = limit, 0, False
        self.cursor: str | None = None

    def next_call(self) -> Call | None:
        if self.done or (self.limit is not None and self.seen >= self.limit):
            return None
        return Call("GET", "/jobs", params={**self.params, "cursor": self.cursor})

    def take(self, page: dict[str, Any]) -> builtins.list[Job]:
        items = page["data"][: None if self.limit is None else self.limit - self.seen]
        self.seen += len(items)
        self.cursor = page.get("next_cursor")
        self.done = not self.cursor
        return [Job.model_validate(item) for item in items]


class SweepPages:
    """``GET /sweeps`` a page at a time (both clients): the next call (pages of at most 500, or of what is
    left of ``limit``), and the sweeps a page holds."""

    def __init__(self, owner: str | None, limit: int | None) -> None:
        self.owner, self.limit = owner, limit
        self.found: builtins.list[Sweep] = []
        self.cursor: str | None = None
        self.done = False

    def next_call(self) -> Call | None:
        if self.done:
            return None
        size = 500 if self.limit is None else max(1, min(500, self.limit - len(self.found)))
        return Call("GET", "/sweeps", params={"owner": self.owner, "limit": size, "cursor": self.cursor})

    def take(self, page: dict[str, Any]) -> None:
        self.found += [Sweep.model_validate(s) for s in page["data"]]
        self.cursor = page.get("next_cursor")
        self.done = not self.cursor or (self.limit is not None and len(self.found) >= self.limit)
        self.found = self.found[: self.limit]


def logs_call(
    job_id: int, after: int | None, attempt: int | None, stream: str | None, tail: int | None, limit: int = 1000
) -> Call:
    params = {"after": after, "attempt": attempt, "stream": stream, "tail": tail, "limit": limit}
    return Call("GET", f"/jobs/{job_id}/logs", params=params)


def metrics_call(job_id: int, name: str | None, max_points: int | None) -> Call:
    return Call("GET", f"/jobs/{job_id}/metrics", params={"name": name, "max_points": max_points})


def merged_metrics(answers: builtins.list[dict[str, Any]]) -> dict[str, Any]:
    """One ``GET /jobs/{id}/metrics`` answer out of one per series."""
    merged: dict[str, Any] = {"series": {}, "summary": {}}
    for answer in answers:
        merged["job_id"] = answer.get("job_id")
        merged["series"].update(answer.get("series", {}))
        merged["summary"].update(answer.get("summary", {}))
    return merged


class Client:
    """The service, from Python. ``server`` and ``token`` default to ``TRAINJOBS_SERVER``/``TRAINJOBS_TOKEN``,
    then to the file ``trainjobs login`` wrote."""

    def __init__(
        self,
        server: str | None = None,
        token: str | None = None,
        *,
        timeout: float = 30,
        retry_seconds: float = 60,
        **http_options: Any,
    ) -> None:
        found = resolve(server, token)
        self.server, self.token, self.retry_seconds = found.server, found.token, retry_seconds
        headers = {"Authorization": f"Bearer {found.token}"} if found.token else {}
        self.http = httpx.Client(base_url=found.server, headers=headers, timeout=timeout, **http_options)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    def send(self, call: Call, *, stream: bool = False) -> httpx.Response:
        """Send ``call``, retrying what is transient; raises the error of a 4xx (and of a 5xx once retries are spent)."""
        retry = Retrying(call, self.server, self.retry_seconds)
        while True:
            response, error = None, None
            try:
                response = self.http.send(call.request(self.http), stream=stream)
                if response.status_code not in TRANSIENT_STATUSES:
                    if response.status_code >= 400:
                        response.read()  # a streamed answer's detail
                    return checked(response)
                response.read()
            except TRANSIENT_ERRORS as exc:
                error = exc
            time.sleep(retry.pause(response, error))

    def json(self, call: Call) -> Any:
        return self.send(call).json()

    # --- who -----------------------------------------------------------------------

    def me(self) -> dict[str, Any]:
        answer: dict[str, Any] = self.json(Call("GET", "/me"))
        return answer

    def login(self, username: str, password: str, *, save: bool = False) -> str:
        """A new user token for ``username``; with ``save``, written to the credentials file."""
        answer = self.json(Call("POST", "/auth/login", json={"username": username, "password": password}))
        token: str = answer["token"]
        self.token = token
        self.http.headers["Authorization"] = f"Bearer {token}"
        if save:
            from trainjobs.credentials import save as save_credentials

            save_credentials(self.server, token)
        return token

    def create_token(self, name: str, expires_in_days: float | None = None) -> dict[str, Any]:
        answer: dict[str, Any] = self.json(
            Call("POST", "/tokens", json={"name": name, "expires_in_days": expires_in_days})
        )
        return answer

    def tokens(self) -> builtins.list[dict[str, Any]]:
        answer = self.json(Call("GET", "/tokens"))
        return list(answer["data"] if isinstance(answer, dict) else answer)

    def revoke_token(self, token_id: int) -> None:
        self.send(Call("DELETE", f"/tokens/{token_id}"))

    # --- jobs ----------------------------------------------------------------------

    def submit(
        self,
        spec: BaseModel | dict[str, Any],
        idempotency_key: str | None = None,
        *,
        name: str | None = None,
        priority: int | None = None,
    ) -> Job:
        return Job.model_validate(self.json(submit_call(spec, idempotency_key, name, priority)))

    def pipeline(self, pretrain: BaseModel | dict[str, Any], finetune: BaseModel | dict[str, Any]) -> tuple[Job, Job]:
        """Submit both: the finetune starts from the pretrain's encoder once it has succeeded."""
        first = self.submit(pretrain)
        return first, self.submit(with_base(finetune, first.id))

    def get(self, job_id: int) -> Job:
        return Job.model_validate(self.json(Call("GET", f"/jobs/{job_id}")))

    def list(
        self,
        *,
        status: str | None = None,
        kind: str | None = None,
        owner: str | None = None,
        limit: int | None = None,
        page_size: int = 100,
        sweep: int | None = None,
    ) -> Iterator[Job]:
        """Your jobs (an admin's: ``owner=NAME`` or ``*``; ``sweep``: that sweep's trials), newest first, over
        every page (or the first ``limit``)."""
        pages = Pages(status, kind, owner, limit, page_size, sweep)
        while (call := pages.next_call()) is not None:
            yield from pages.take(self.json(call))

    def wait(self, job_id: int, timeout: float | None = None, poll: float = 1.0) -> Job:
        """The job once it has finished; ``TimeoutError`` if it has not within ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            job = self.get(job_id)
            if job.finished:
                return job
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"job {job_id} is still {job.status} after {timeout:g} s")
            time.sleep(poll if deadline is None else max(0.0, min(poll, deadline - time.monotonic())))

    def cancel(self, job_id: int) -> Job:
        return Job.model_validate(self.json(Call("POST", f"/jobs/{job_id}/cancel")))

    def delete(self, job_id: int) -> None:
        self.send(Call("DELETE", f"/jobs/{job_id}"))

    def workers(self) -> builtins.list[dict[str, Any]]:
        """Admins: every worker heard from in the last day (id, host, version, devices, running, lost, ...)."""
        return list(self.json(Call("GET", "/workers"))["data"])

    # --- sweeps ---------------------------------------------------------------------

    def submit_sweep(self, spec: dict[str, Any]) -> Sweep:
        """A sweep (``{"base": <job>, "parameters": {...}, "seeds": [...], ...}``): all its trials, or a 422."""
        return Sweep.model_validate(self.json(Call("POST", "/sweeps", json=spec)))

    def sweep(self, sweep_id: int) -> Sweep:
        """The sweep with its trials, per-setting results, best setting and best trial."""
        return Sweep.model_validate(self.json(Call("GET", f"/sweeps/{sweep_id}")))

    def sweeps(self, *, owner: str | None = None, limit: int | None = 50) -> builtins.list[Sweep]:
        """Your sweeps (an admin's: ``owner=NAME`` or ``*``), newest first: the first ``limit`` (None: all)."""
        pages = SweepPages(owner, limit)
        while (call := pages.next_call()) is not None:
            pages.take(self.json(call))
        return pages.found

    def wait_sweep(self, sweep_id: int, timeout: float | None = None, poll: float = 2.0) -> Sweep:
        """The sweep once no trial is queued or running; ``TimeoutError`` after ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not (sweep := self.sweep(sweep_id)).finished:
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"sweep {sweep_id} is still running after {timeout:g} s: {sweep.counts}")
            time.sleep(poll)
        return sweep

    def cancel_sweep(self, sweep_id: int) -> Sweep:
        return Sweep.model_validate(self.json(Call("POST", f"/sweeps/{sweep_id}/cancel")))

    def retry_sweep(self, sweep_id: int) -> Sweep:
        """Run the failed and cancelled trials again (the same jobs, their next attempt)."""
        return Sweep.model_validate(self.json(Call("POST", f"/sweeps/{sweep_id}/retry")))

    def delete_sweep(self, sweep_id: int) -> None:
        self.send(Call("DELETE", f"/sweeps/{sweep_id}"))

    # --- what a job made -----------------------------------------------------------------

    def metrics(
        self, job_id: int, names: builtins.list[str] | None = None, max_points: int | None = None
    ) -> dict[str, Any]:
        """``{"series": {name: [{step, epoch, value, time}]}, "summary": {name: {last, best, best_step}}}``."""
        if not names:
            answer: dict[str, Any] = self.json(metrics_call(job_id, None, max_points))
            return answer
        return merged_metrics([self.json(metrics_call(job_id, n, max_points)) for n in names])

    def checkpoints(self, job_id: int) -> builtins.list[Checkpoint]:
        return [Checkpoint.model_validate(c) for c in self.json(Call("GET", f"/jobs/{job_id}/checkpoints"))["data"]]

    def logs(
        self,
        job_id: int,
        *,
        follow: bool = False,
        after: int | None = None,
        attempt: int | None = None,
        stream: str | None = None,
        tail: int | None = None,
        poll: float = 1.0,
    ) -> Iterator[LogLine]:
        """The job's log lines in order; with ``follow``, new ones as they come until the job has finished."""
        while True:
            finished = not follow or self.get(job_id).finished  # before the page: its last lines are in it
            page = self.json(logs_call(job_id, after, attempt, stream, tail))
            tail = None  # only the first page is the tail; then everything after it
            for line in page["lines"]:
                yield LogLine.model_validate(line)
            after = page.get("next", after)
            if len(page["lines"]) >= 1000:
                continue
            if finished:
                return
            time.sleep(poll)

    def download_checkpoint(
        self,
        job_id: int,
        path: str | Path,
        tag: str | None = "best",
        format: str = "pt",
        on_progress: Callable[[int, int | None], None] | None = None,
    ) -> Path:
        """Download to ``path``: resumes a partial download (``path``.part) with Range, checks the sha256,
        then renames into place; a file that does not match is removed and ``TrainjobsError`` raised."""
        dest = Path(path)
        partial, etag_file = dest.with_name(dest.name + ".part"), dest.with_name(dest.name + ".part.etag")
        headers: dict[str, str] = {}
        if partial.exists() and etag_file.exists():
            headers = {"Range": f"bytes={partial.stat().st_size}-", "If-Range": etag_file.read_text().strip()}
        call = Call("GET", f"/jobs/{job_id}/checkpoint", params={"tag": tag, "format": format}, headers=headers)
        try:
            response = self.send(call, stream=True)
        except TrainjobsError as exc:
            if exc.status != 416:
                raise
            return finish_download(partial, etag_file, dest, etag_file.read_text())  # it was all here already
        try:
            etag = response.headers.get("etag", "")
            etag_file.write_text(etag)
            resumed = response.status_code == 206
            done = partial.stat().st_size if resumed else 0
            length = response.headers.get("content-length", "")
            total = done + int(length) if length.isdigit() else None
            with partial.open("ab" if resumed else "wb") as out:
                for chunk in response.iter_bytes(4 * 1024 * 1024):
                    out.write(chunk)
                    done += len(chunk)
                    if on_progress is not None:
                        on_progress(done, total)
        finally:
            response.close()
        return finish_download(partial, etag_file, dest, etag)

    # --- events ----------------------------------------------------------------------

    def events(self, job_id: int | None = None) -> Iterator[dict[str, Any]]:
        """The job's events (``status``, ``metrics``, ``log``, ``end``) as they happen, reconnecting where a
        stream broke off; without ``job_id``, status events of all your jobs."""
        from trainjobs.events import follow_events

        yield from follow_events(self, job_id)


def finish_download(partial: Path, etag_file: Path, dest: Path, etag: str) -> Path:
    expected = etag.strip('"').removeprefix("W/").strip('"')
    digest = hashlib.sha256()
    with partial.open("rb") as f:
        while chunk := f.read(4 * 1024 * 1024):
            digest.update(chunk)
    if expected and digest.hexdigest() != expected:
        partial.unlink(missing_ok=True)
        etag_file.unlink(missing_ok=True)
        raise TrainjobsError(
            f"the download does not match its checksum (sha256 {digest.hexdigest()[:16]}..., expected "
            f"{expected[:16]}...); it was removed: download it again"
        )
    partial.replace(dest)
    etag_file.unlink(missing_ok=True)
    return dest


class AsyncClient:
    """``Client``'s calls for asyncio (the same calls, checks and retries)."""

    def __init__(
        self, server: str | None = None, token: str | None = None, *, timeout: float = 30, retry_seconds: float = 60
    ) -> None:
        found = resolve(server, token)
        self.server, self.token, self.retry_seconds = found.server, found.token, retry_seconds
        headers = {"Authorization": f"Bearer {found.token}"} if found.token else {}
        self.http = httpx.AsyncClient(base_url=found.server, headers=headers, timeout=timeout)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.http.aclose()

    async def send(self, call: Call) -> httpx.Response:
        retry = Retrying(call, self.server, self.retry_seconds)
        while True:
            response, error = None, None
            try:
                response = await self.http.send(call.request(self.http))
                if response.status_code not in TRANSIENT_STATUSES:
                    return checked(response)
            except TRANSIENT_ERRORS as exc:
                error = exc
            await asyncio.sleep(retry.pause(response, error))

    async def json(self, call: Call) -> Any:
        return (await self.send(call)).json()

    async def submit(
        self,
        spec: BaseModel | dict[str, Any],
        idempotency_key: str | None = None,
        *,
        name: str | None = None,
        priority: int | None = None,
    ) -> Job:
        return Job.model_validate(await self.json(submit_call(spec, idempotency_key, name, priority)))

    async def pipeline(
        self, pretrain: BaseModel | dict[str, Any], finetune: BaseModel | dict[str, Any]
    ) -> tuple[Job, Job]:
        first = await self.submit(pretrain)
        return first, await self.submit(with_base(finetune, first.id))

    async def get(self, job_id: int) -> Job:
        return Job.model_validate(await self.json(Call("GET", f"/jobs/{job_id}")))

    async def list(
        self,
        *,
        status: str | None = None,
        kind: str | None = None,
        owner: str | None = None,
        limit: int | None = None,
        page_size: int = 100,
        sweep: int | None = None,
    ) -> AsyncIterator[Job]:
        pages = Pages(status, kind, owner, limit, page_size, sweep)
        while (call := pages.next_call()) is not None:
            for job in pages.take(await self.json(call)):
                yield job

    async def wait(self, job_id: int, timeout: float | None = None, poll: float = 1.0) -> Job:
        async def until_finished() -> Job:
            while not (job := await self.get(job_id)).finished:
                await asyncio.sleep(poll)
            return job

        try:
            return await asyncio.wait_for(until_finished(), timeout)
        except TimeoutError:
            raise TimeoutError(f"job {job_id} has not finished after {timeout:g} s") from None

    async def cancel(self, job_id: int) -> Job:
        return Job.model_validate(await self.json(Call("POST", f"/jobs/{job_id}/cancel")))

    async def delete(self, job_id: int) -> None:
        await self.send(Call("DELETE", f"/jobs/{job_id}"))

    async def submit_sweep(self, spec: dict[str, Any]) -> Sweep:
        return Sweep.model_validate(await self.json(Call("POST", "/sweeps", json=spec)))

    async def sweep(self, sweep_id: int) -> Sweep:
        return Sweep.model_validate(await self.json(Call("GET", f"/sweeps/{sweep_id}")))

    async def wait_sweep(self, sweep_id: int, timeout: float | None = None, poll: float = 2.0) -> Sweep:
        async def until_finished() -> Sweep:
            while not (sweep := await self.sweep(sweep_id)).finished:
                await asyncio.sleep(poll)
            return sweep

        try:
            return await asyncio.wait_for(until_finished(), timeout)
        except TimeoutError:
            raise TimeoutError(f"sweep {sweep_id} is still running after {timeout:g} s") from None

    async def sweeps(self, *, owner: str | None = None, limit: int | None = 50) -> builtins.list[Sweep]:
        pages = SweepPages(owner, limit)
        while (call := pages.next_call()) is not None:
            pages.take(await self.json(call))
        return pages.found

    async def delete_sweep(self, sweep_id: int) -> None:
        await self.send(Call("DELETE", f"/sweeps/{sweep_id}"))

    async def cancel_sweep(self, sweep_id: int) -> Sweep:
        return Sweep.model_validate(await self.json(Call("POST", f"/sweeps/{sweep_id}/cancel")))

    async def retry_sweep(self, sweep_id: int) -> Sweep:
        return Sweep.model_validate(await self.json(Call("POST", f"/sweeps/{sweep_id}/retry")))

    async def metrics(
        self, job_id: int, names: builtins.list[str] | None = None, max_points: int | None = None
    ) -> dict[str, Any]:
        if not names:
            answer: dict[str, Any] = await self.json(metrics_call(job_id, None, max_points))
            return answer
        return merged_metrics([await self.json(metrics_call(job_id, n, max_points)) for n in names])

    async def logs(self, job_id: int, *, after: int | None = None, tail: int | None = None) -> builtins.list[LogLine]:
        page = await self.json(logs_call(job_id, after, None, None, tail))
        return [LogLine.model_validate(line) for line in page["lines"]]

    async def checkpoints(self, job_id: int) -> builtins.list[Checkpoint]:
        found = await self.json(Call("GET", f"/jobs/{job_id}/checkpoints"))
        return [Checkpoint.model_validate(c) for c in found["data"]]

    async def events(self, job_id: int | None = None) -> AsyncIterator[dict[str, Any]]:
        """As ``Client.events``: the job's events as they happen, reconnecting where a stream broke off."""
        from trainjobs.events import afollow_events

        async for event in afollow_events(self, job_id):
            yield event

    async def download_checkpoint(
        self, job_id: int, path: str | Path, tag: str | None = "best", format: str = "pt"
    ) -> Path:
        """As ``Client.download_checkpoint``, the file written from a worker thread."""
        with Client(self.server, self.token, retry_seconds=self.retry_seconds) as sync:
            return await asyncio.to_thread(sync.download_checkpoint, job_id, path, tag, format)
