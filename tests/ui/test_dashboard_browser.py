"""The dashboard in a real browser (headless Chromium) against a real API process and a real worker
running tiny jobs: sign in, a live jobs table, a job page whose chart and log grow while it runs,
cancel, compare, a sweep, a refused spec, another user's job, sign out. Every request the pages make is
recorded: one to any other host fails the test. The jobs, job, compare and sweep pages are photographed."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from devtools.servers import ApiServer, WorkerProcess, wait_until
from tests.conftest import TINY_JOB

pytestmark = pytest.mark.slow
LONG_JOB = {
    **TINY_JOB,
    "name": "long-run",
    "train": {"epochs": 10_000, "batch_size": 16, "log_every_steps": 1},
}
"""Runs until cancelled: two steps an epoch, a point every step."""


@dataclass
class Service:
    api: ApiServer
    root: Path
    worker: WorkerProcess | None = None
    hosts: set[str] = field(default_factory=set)

    def start_worker(self) -> None:
        if self.worker is None:
            self.worker = WorkerProcess(self.api.url, self.root / "worker", poll_seconds=0.2, start_method="forkserver")

    def admin_password(self) -> str:
        text = Path(self.api.env["TRAINJOBS_ADMIN_CREDENTIALS_FILE"]).read_text()
        return re.search(r"TRAINJOBS_PASSWORD=(\S+)", text).group(1)  # type: ignore[union-attr]

    def submit(self, spec: dict[str, Any], token: str | None = None) -> int:
        headers = {"Authorization": f"Bearer {token or self.api.token}"}
        r = httpx.post(f"{self.api.url}/jobs", json=spec, headers=headers)
        assert r.status_code == 201, r.text
        return int(r.json()["id"])

    def job(self, job_id: int) -> dict[str, Any]:
        return dict(httpx.get(f"{self.api.url}/jobs/{job_id}", headers=self.api.headers).json())


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    root = tmp_path_factory.mktemp("dashboard")
    with ApiServer(root / "api") as api:
        svc = Service(api, root)
        try:
            yield svc
        finally:
            if svc.worker is not None:
                svc.worker.stop()
    elsewhere = {h for h in svc.hosts if h not in (urlsplit(api.url).netloc, "data")}
    assert not elsewhere, f"pages asked other hosts: {elsewhere}"


@pytest.fixture
def context(browser: Any, service: Service) -> Iterator[Any]:
    """A fresh browser profile that records the host of every request its pages make."""
    ctx = browser.new_context(base_url=service.api.url, viewport={"width": 1400, "height": 900})
    ctx.on("request", lambda request: service.hosts.add(host_of(request.url)))
    yield ctx
    ctx.close()


def host_of(url: str) -> str:
    """The host a request goes to; a page's own blob: and data: URLs go nowhere (the service's host then)."""
    parts = urlsplit(url)
    if parts.scheme in ("blob", "data"):
        return urlsplit(parts.path).netloc if parts.scheme == "blob" else "data"
    return parts.netloc or url


def sign_in(ctx: Any, username: str, password: str) -> Any:
    page = ctx.new_page()
    page.goto("/ui/")
    assert "/ui/login" in page.url  # no session: to the sign-in form
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", password)
    page.click("#login-form button[type=submit]")
    page.wait_for_url(re.compile(r"/ui/$"))
    return page


def status_of(page: Any, job_id: int) -> str:
    return str(page.get_attribute(f"#job-{job_id}", "data-status") or "")


def test_sign_in_then_the_table_follows_a_job_from_queued_to_succeeded_without_a_reload(
    context: Any, service: Service
) -> None:
    page = sign_in(context, "admin", service.admin_password())
    assert page.text_content("#whoami").strip().startswith("admin")
    page.evaluate("window.notReloaded = true")
    job_id = service.submit({**TINY_JOB, "name": "first", "train": {"epochs": 40, "batch_size": 16}})
    page.wait_for_selector(f"#job-{job_id}", timeout=10_000)
    assert status_of(page, job_id) == "queued"
    service.start_worker()
    seen: list[str] = []
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and (not seen or seen[-1] != "succeeded"):
        now = status_of(page, job_id)
        if now and (not seen or seen[-1] != now):
            seen.append(now)
        time.sleep(0.05)
    assert seen == ["queued", "running", "succeeded"], seen
    assert page.evaluate("window.notReloaded") is True
    row = page.text_content(f"#job-{job_id}")
    assert "test_loss" in row and "first" in row  # the best primary metric arrived with the result


# Page scripts are read with page.evaluate (the DevTools protocol): the pages' CSP forbids eval, which
# Playwright's wait_for_function would need.
def chart_points(page: Any, name: str) -> int:
    return int(page.evaluate(f"(window.tj.charts[{json.dumps(name)}] || {{plot: {{data: [[]]}}}}).plot.data[0].length"))


def test_the_job_page_chart_and_log_grow_while_it_runs_and_cancel_stops_it(
    context: Any, service: Service, screenshots: Path
) -> None:
    service.start_worker()
    page = sign_in(context, "admin", service.admin_password())
    job_id = service.submit(LONG_JOB)
    page.goto(f"/ui/jobs/{job_id}")
    wait_until(lambda: page.evaluate("Boolean(window.tj && window.tj.charts && window.tj.charts.train_loss)"), 60)
    first = chart_points(page, "train_loss")
    wait_until(lambda: chart_points(page, "train_loss") > first + 5, timeout=30, what="the chart to gain points")
    assert page.get_attribute("#job-header", "data-status") == "running"
    page.click("[data-tab=logs]")
    wait_until(lambda: "epoch" in (page.text_content("#log") or ""), timeout=30, what="the log tail")
    assert page.locator("#log .attempt").first.text_content() == "attempt 1"
    assert page.locator("#log .line.system").count() >= 1  # the worker's own lines, marked
    page.fill("#log-search", "epoch 1/")
    assert "matching line" in (page.text_content("#log-matches") or "")
    page.fill("#log-search", "")
    page.click("[data-tab=metrics]")
    wait_until(lambda: chart_points(page, "train_loss") > 60, timeout=30, what="a longer curve for the picture")
    page.screenshot(path=str(screenshots / "job.png"), full_page=True)
    page.click("#cancel")
    page.wait_for_selector("#job-header[data-status=cancelled]", timeout=60_000)
    assert service.job(job_id)["status"] == "cancelled"


def test_compare_two_jobs_overlays_their_curves_and_shows_the_fields_that_differ(
    context: Any, service: Service, screenshots: Path
) -> None:
    service.start_worker()
    a = service.submit({**TINY_JOB, "name": "lr-0.01", "train": {"epochs": 12, "batch_size": 16, "lr": 0.01}})
    b = service.submit({**TINY_JOB, "name": "lr-0.001", "train": {"epochs": 12, "batch_size": 16, "lr": 0.001}})
    wait_until(lambda: service.job(b)["status"] == "succeeded" and service.job(a)["status"] == "succeeded", 90)
    page = sign_in(context, "admin", service.admin_password())
    page.check(f"#job-{a} .pick")
    page.check(f"#job-{b} .pick")
    page.screenshot(path=str(screenshots / "jobs.png"), full_page=True)
    page.click("#compare")
    page.wait_for_url(re.compile(rf"/ui/compare\?ids={a}(%2C|,){b}$"))
    wait_until(lambda: page.evaluate("Boolean(window.tj.charts && window.tj.charts.test_loss)"), 30)
    legend = page.evaluate("window.tj.charts.test_loss.plot.series.map(s => s.label)")
    assert legend[1:] == [f"job {a} · lr-0.01", f"job {b} · lr-0.001"]
    diff = page.text_content("#spec-diff")
    assert "train.lr" in diff and "0.01" in diff and "0.001" in diff and "name" in diff
    assert "dataset.name" not in diff  # the same in both
    assert "test_loss" in page.text_content("#results")
    page.screenshot(path=str(screenshots / "compare.png"), full_page=True)


def test_a_sweep_page_follows_its_trials_and_charts_the_metric_against_each_parameter(
    context: Any, service: Service, screenshots: Path
) -> None:
    service.start_worker()
    body = {
        "name": "digits lr x bottleneck",
        "base": {
            "kind": "pretrain",
            "dataset": {"name": "digits"},
            "model": {"arch": "mlp_autoencoder", "hidden": [32], "bottleneck": 8},
            "train": {"epochs": 3, "batch_size": 64},
        },
        "parameters": {"train.lr": {"values": [0.03, 0.003, 0.0003]}, "model.bottleneck": {"values": [4, 16]}},
        "seeds": [0],
        "max_concurrent": 2,
    }
    r = httpx.post(f"{service.api.url}/sweeps", json=body, headers=service.api.headers)
    assert r.status_code == 201, r.text
    sweep_id = r.json()["id"]
    page = sign_in(context, "admin", service.admin_password())
    page.goto(f"/ui/sweeps/{sweep_id}")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # the page reloads itself as trials finish
        page.wait_for_load_state()
        if (page.text_content("#sweep-status") or "").strip() == "succeeded":
            break
        time.sleep(0.5)
    assert (page.text_content("#sweep-status") or "").strip() == "succeeded"
    charts = page.evaluate("window.tj.sweepCharts")
    assert sorted(charts) == ["model.bottleneck", "train.lr"]
    assert sorted(charts["train.lr"]["xs"]) == [0.0003, 0.0003, 0.003, 0.003, 0.03, 0.03]
    assert len(charts["model.bottleneck"]["ys"]) == 6
    assert page.locator("#charts .uplot").count() == 2
    assert "train.lr=" in (page.text_content("#best") or "")
    page.screenshot(path=str(screenshots / "sweep.png"), full_page=True)
    page.goto("/ui/sweeps")
    assert page.locator(f"#sweeps tr[data-sweep='{sweep_id}']").count() == 1


def test_a_refused_spec_shows_the_field_error_and_a_good_one_opens_its_job(context: Any, service: Service) -> None:
    page = sign_in(context, "admin", service.admin_password())
    page.goto("/ui/submit")
    bad = {**TINY_JOB, "train": {"epochs": 1, "batch_size": 16, "lr": -1}}
    page.fill("#spec-text", json.dumps(bad, indent=2))
    page.click("#submit")
    error = page.locator(".field-error[data-field='train.lr']")
    error.wait_for()
    assert "greater than 0" in (error.text_content() or "")
    assert error.get_attribute("data-line") is not None  # the line of "lr" in the text
    page.select_option("#template", "digits-pretrain")
    assert json.loads(page.input_value("#spec-text"))["name"] == "digits-ae"
    page.click("#submit")
    page.wait_for_url(re.compile(r"/ui/jobs/\d+$"))
    assert "digits-ae" in page.text_content("#job-header")


def test_another_user_gets_a_404_page_for_the_first_users_job(context: Any, browser: Any, service: Service) -> None:
    job_id = service.submit({**TINY_JOB, "name": "admins-own"})
    made = httpx.post(
        f"{service.api.url}/users", json={"username": "bob", "password": "bob-password-1"}, headers=service.api.headers
    )
    assert made.status_code in (201, 409), made.text
    page = sign_in(context, "bob", "bob-password-1")
    response = page.goto(f"/ui/jobs/{job_id}")
    assert response.status == 404
    assert page.is_visible("#not-found") and "admins-own" not in page.content()
    assert f"job-{job_id}" not in page.content()


def test_sign_out_ends_the_session_and_its_cookie_stops_working(context: Any, browser: Any, service: Service) -> None:
    page = sign_in(context, "admin", service.admin_password())
    cookies = context.cookies()
    session = next(c for c in cookies if c["name"] == "trainjobs_session")
    assert session["httpOnly"] and session["sameSite"] == "Strict"
    page.click("#logout")
    page.wait_for_url(re.compile(r"/ui/login"))
    page.goto("/ui/")
    assert "/ui/login" in page.url
    replay = browser.new_context(base_url=service.api.url)
    try:
        replay.add_cookies([session])  # the old cookie, kept by an attacker: revoked with the session
        again = replay.new_page()
        again.goto("/ui/")
        assert "/ui/login" in again.url
    finally:
        replay.close()


def test_the_api_docs_pages_load_from_the_service_alone(context: Any, service: Service) -> None:
    page = context.new_page()
    page.goto("/docs")
    page.locator(".swagger-ui .info .title", has_text="trainjobs").wait_for(timeout=30_000)
    assert page.locator(".swagger-ui .opblock").count() > 20  # every operation, from /openapi.json
    page.goto("/redoc")
    page.locator("h1", has_text="trainjobs").wait_for(timeout=30_000)
    assert page.locator("[data-section-id]").count() > 20
