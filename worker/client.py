"""HTTP client of the worker protocol (``/worker/*``).

Connection failures and 5xx answers are retried with capped backoff by the
callers that can wait (claim, heartbeat, uploads); a 409 or 404 on a fenced
call means the lease is gone and raises ``LeaseGone``.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpcore
import httpx
from pydantic import BaseModel, ValidationError

from app.core.protocol import (
    Capabilities,
    ClaimedJob,
    ClaimEnvelope,
    ClaimRequest,
    FinishRequest,
    FinishStatus,
    HeartbeatRequest,
    HeartbeatResponse,
    LogBatch,
    LogLineIn,
    MetricIn,
    MetricsBatch,
    Progress,
    ReleaseRequest,
    Rendezvous,
    RendezvousRequest,
    Result,
    UnsupportedJob,
    checkpoint_path,
    summarize,
)
from app.core.states import CheckpointFormat, CheckpointTag, ErrorClass

log = logging.getLogger("trainjobs.worker")

CHUNK = 4 * 1024 * 1024
READ_BYTES = 1024 * 1024
"""httpcore reads a response 64 KiB at a time; a checkpoint's download, receiving, hashing and writing in one
thread, spent a third less CPU (540 -> 610-810 MB/s here) reading 1 MiB at a time."""
if isinstance(getattr(httpcore.HTTP11Connection, "READ_NUM_BYTES", None), int):
    httpcore.HTTP11Connection.READ_NUM_BYTES = READ_BYTES
JSON = {"Content-Type": "application/json"}


class LeaseGone(Exception):
    """The service no longer lets this worker write to the job (requeued, cancelled, deleted, taken)."""


class ServiceUnavailable(Exception):
    """The service could not be reached, or answered 5xx."""


class StorageFull(ServiceUnavailable):
    """The service's disk is full (507): worth retrying a while, not for ever."""


class ProtocolError(Exception):
    """The service refused a request for a reason retrying will not fix (4xx other than 409/404)."""


class UnstorableResult(ProtocolError):
    """A job's result that the service would refuse (a NaN, say): the message says which value."""


def without_device_state(capabilities: Capabilities) -> Capabilities:
    """What a service of the release before reads: devices without whether they are busy."""
    devices = [device.model_copy(update={"busy": None}) for device in capabilities.devices]
    return capabilities.model_copy(update={"devices": devices})


class WorkerClient:
    def __init__(self, api_url: str, token: str | None = None, timeout: float = 30.0) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(base_url=api_url.rstrip("/"), headers=headers, timeout=timeout)
        self.service_ignores_capabilities = False
        """Set once an older service refused them: claims go on without."""
        self.service_ignores_device_state = False
        """Set once a service refused the devices' busy state: claims describe the devices without it."""
        self.service_hears_no_description = False
        """Set once a service refused a heartbeat that says what the worker is: heartbeats go on without."""

    def close(self) -> None:
        self.http.close()

    def _request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        try:
            response = self.http.request(method, path, **kw)
        except httpx.HTTPError as exc:  # connect, read, timeouts: the service is away
            raise ServiceUnavailable(f"{method} {path}: {exc.__class__.__name__}: {exc}") from exc
        if response.status_code == 507:
            raise StorageFull(_detail(response))
        if response.status_code >= 500:
            raise ServiceUnavailable(f"{method} {path}: HTTP {response.status_code}")
        if response.status_code in (404, 409) and "/jobs/" in path:
            raise LeaseGone(_detail(response))
        if response.status_code >= 400:
            raise ProtocolError(f"{method} {path}: HTTP {response.status_code}: {_detail(response)}")
        return response

    def _post(self, path: str, body: BaseModel, **kw: Any) -> httpx.Response:
        return self._request("POST", path, content=body.model_dump_json(), headers=JSON, **kw)

    def claim(
        self, worker_id: str, device: str, wait_seconds: float, capabilities: Capabilities | None = None
    ) -> ClaimedJob | None:
        if self.service_ignores_capabilities:
            capabilities = None
        elif capabilities is not None and self.service_ignores_device_state:
            capabilities = without_device_state(capabilities)
        body = ClaimRequest(worker_id=worker_id, device=device, wait_seconds=wait_seconds, capabilities=capabilities)
        try:  # without the fields left unset: a service of the release before reads the rest
            r = self._request(
                "POST",
                "/worker/claim",
                content=body.model_dump_json(exclude_none=True),
                headers=JSON,
                timeout=wait_seconds + 30,
            )
        except ProtocolError as exc:
            if capabilities is None or "capabilities" not in str(exc):
                raise
            if not self.service_ignores_device_state:  # the release before: devices without busy
                self.service_ignores_device_state = True
            else:  # older still: claim as before
                self.service_ignores_capabilities = True
            return self.claim(worker_id, device, wait_seconds, capabilities)
        if r.status_code == 204:
            return None
        try:
            return ClaimedJob.model_validate_json(r.content)
        except ValidationError as exc:
            try:
                envelope = ClaimEnvelope.model_validate_json(r.content)
            except ValidationError:
                raise ProtocolError(f"POST /worker/claim: the answer is not a claimed job: {summarize(exc)}") from None
            raise UnsupportedJob(envelope.id, envelope.lease_token, summarize(exc)) from None

    def heartbeat(
        self,
        job_id: int,
        lease_token: str,
        progress: Progress | None,
        *,
        node: int | None = None,
        worker_id: str | None = None,
        capabilities: Capabilities | None = None,
    ) -> bool:
        """Renew the lease (the node's, of a multi-node job), saying what this worker is now; whether a cancel was
        asked for. An older service that refuses the description gets heartbeats without it from then on."""
        if self.service_hears_no_description:
            worker_id = capabilities = None
        body = HeartbeatRequest(
            lease_token=lease_token, progress=progress, node=node, worker_id=worker_id, capabilities=capabilities
        )
        path = f"/worker/jobs/{job_id}/heartbeat"
        try:
            r = self._request("POST", path, content=body.model_dump_json(exclude_none=True), headers=JSON)
        except ProtocolError as exc:
            if capabilities is None or ("capabilities" not in str(exc) and "worker_id" not in str(exc)):
                raise
            self.service_hears_no_description = True
            return self.heartbeat(job_id, lease_token, progress, node=node)
        return HeartbeatResponse.model_validate_json(r.content).cancel_requested

    def rendezvous(self, job_id: int, lease_token: str, node: int, address: str | None) -> Rendezvous:
        """Where a multi-node job's ranks meet: node 0 publishes ``address``, the others read it (None: not yet)."""
        body = RendezvousRequest(lease_token=lease_token, node=node, address=address)
        r = self._post(f"/worker/jobs/{job_id}/rendezvous", body)
        return Rendezvous.model_validate_json(r.content)

    def send_metrics(self, job_id: int, lease_token: str, points: Sequence[MetricIn]) -> None:
        # Not validated here (the service does it); pydantic-core encodes 1,000 points in a third of json's time.
        body = MetricsBatch.model_construct(lease_token=lease_token, points=list(points))
        self._post(f"/worker/jobs/{job_id}/metrics", body)

    def send_logs(self, job_id: int, lease_token: str, lines: Sequence[dict[str, Any]]) -> None:
        body = LogBatch.model_construct(
            lease_token=lease_token, lines=[LogLineIn.model_construct(**li) for li in lines]
        )
        self._post(f"/worker/jobs/{job_id}/logs", body)

    def upload_artifact(self, job_id: int, lease_token: str, name: str, path: Path) -> None:
        """Upload a small file the job made (a GAN's samples) as its artifact ``name``."""
        data = path.read_bytes()
        headers = {
            "X-Lease-Token": lease_token,
            "X-Artifact-Sha256": hashlib.sha256(data).hexdigest(),
            "Content-Type": "application/octet-stream",
        }
        self._request("PUT", f"/worker/jobs/{job_id}/artifacts/{name}", content=data, headers=headers)

    def upload_checkpoint(
        self,
        job_id: int,
        lease_token: str,
        *,
        tag: CheckpointTag,
        fmt: CheckpointFormat,
        path: Path,
        epoch: int,
        step: int,
        metric: float | None,
        stored: dict[CheckpointTag, str] | None = None,
        sha256: str | None = None,
    ) -> str:
        """Upload ``path`` as the job's ``tag`` checkpoint; returns its sha256.

        ``stored`` maps tags already uploaded in this format to their sha256: a file stored under
        another tag is not sent again (``X-Checkpoint-Same-As``), the service links it. ``sha256``: the
        file's, computed as it was written (the training process does); else it is read once to hash it.
        """
        digest = sha256 or sha256_file(path)
        headers = {
            "X-Lease-Token": lease_token,
            "X-Checkpoint-Sha256": digest,
            "X-Checkpoint-Epoch": str(epoch),
            "X-Checkpoint-Step": str(step),
            "Content-Type": "application/octet-stream",
        }
        if metric is not None:
            headers["X-Checkpoint-Metric"] = repr(float(metric))
        url = checkpoint_path(job_id, tag, fmt, worker=True)
        same = next((t for t, sha in (stored or {}).items() if sha == digest), None)
        if same is not None:
            try:
                self._request("PUT", url, headers={**headers, "X-Checkpoint-Same-As": same})
                return digest
            except ProtocolError:
                pass  # not there any more (or an older service): send the file

        def body() -> Iterator[bytes]:
            with path.open("rb") as f:
                while chunk := f.read(CHUNK):
                    yield chunk

        self._request(
            "PUT",
            url,
            content=body(),
            headers={**headers, "Content-Length": str(path.stat().st_size)},
            timeout=httpx.Timeout(30.0, read=600.0, write=600.0),
        )
        return digest

    def download(self, url: str, dest: Path, sha256: str, lease_token: str) -> Path:
        """GET a checkpoint the job holding ``lease_token`` starts from, to ``dest``, and check its hash."""
        tmp = dest.with_suffix(dest.suffix + ".part")
        headers = {"X-Lease-Token": lease_token}
        try:
            with self.http.stream("GET", url, headers=headers, timeout=httpx.Timeout(30.0, read=600.0)) as r:
                if r.status_code >= 500:
                    raise ServiceUnavailable(f"GET {url}: HTTP {r.status_code}")
                if r.status_code >= 400:
                    raise ProtocolError(f"GET {url}: HTTP {r.status_code}")
                digest = hashlib.sha256()
                with tmp.open("wb") as f:
                    for chunk in r.iter_bytes():  # as received: no re-chunking copies
                        digest.update(chunk)
                        f.write(chunk)
        except httpx.HTTPError as exc:
            raise ServiceUnavailable(f"GET {url}: {exc}") from exc
        got = digest.hexdigest()
        if got != sha256:
            tmp.unlink(missing_ok=True)
            raise ServiceUnavailable(f"GET {url}: sha256 {got} does not match {sha256}")
        shutil.move(tmp, dest)
        return dest

    def finish(
        self,
        job_id: int,
        lease_token: str,
        status: FinishStatus,
        *,
        error: str | None = None,
        error_class: ErrorClass | None = None,
        result: Result | None = None,
        progress: Progress | None = None,
    ) -> None:
        try:
            body = FinishRequest(
                lease_token=lease_token,
                status=status,
                error=error,
                error_class=error_class,
                result=None if result is None else dict(result),
                progress=progress,
            )
        except ValidationError as exc:  # the service would refuse it: say so here, once
            raise UnstorableResult("; ".join(e["msg"] for e in exc.errors(include_url=False))) from None
        self._post(f"/worker/jobs/{job_id}/finish", body)

    def release(self, job_id: int, lease_token: str) -> None:
        self._post(f"/worker/jobs/{job_id}/release", ReleaseRequest(lease_token=lease_token))


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _detail(response: httpx.Response) -> str:
    try:
        return str(response.json().get("detail"))
    except ValueError:
        return response.text[:200]
