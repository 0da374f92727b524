"""The dashboard's pages over HTTP (no browser): sessions and their cookie, CSRF, privacy headers,
who sees what, filters and paging, the submit form's errors, compare, the log download."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest

from app.api.auth import SESSION_COOKIE, csrf_token
from app.core import accounts
from app.core.db import Database
from app.core.states import TokenKind
from devtools.servers import WORKER_TOKEN
from tests.api.helpers import claim_job, finish, submit
from tests.authed import AuthedClient
from tests.conftest import finetune_body, pretrain_body


@pytest.fixture
def browser(client: AuthedClient, tokens: dict[str, str]) -> Iterator[AuthedClient]:
    """The test client signed in to the dashboard as alice (a session cookie, no Authorization header)."""
    with client.anonymous():
        r = client.post("/ui/login", data={"token": tokens["alice"]}, follow_redirects=False)
        assert r.status_code == 303, r.text
        yield client
        client.cookies.clear()


def session(client: AuthedClient) -> str:
    value = client.cookies.get(SESSION_COOKIE)
    assert value
    return str(value)


def test_signing_in_sets_a_private_cookie_for_a_new_session_token(client: AuthedClient, db: Database) -> None:
    with db.write() as tx:
        accounts.create_user(tx, "carol", password="carol-password-1")
    with client.anonymous():
        wrong = client.post("/ui/login", data={"username": "carol", "password": "nope"}, follow_redirects=False)
        assert wrong.status_code == 401 and "wrong username or password" in wrong.text
        assert SESSION_COOKIE not in client.cookies
        r = client.post(
            "/ui/login",
            data={"username": "carol", "password": "carol-password-1", "next": "/ui/jobs/1"},
            follow_redirects=False,
        )
        assert r.status_code == 303 and r.headers["location"] == "/ui/jobs/1"
        cookie = r.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict") and "Path=/" in cookie
        me = client.get("/me")  # the cookie works on the JSON API too
        assert me.status_code == 200 and me.json()["username"] == "carol"
        assert me.headers["cache-control"] == "no-store"
        with db.read() as tx:
            names = [t.name for t in accounts.list_tokens(tx, accounts.user_named(tx, "carol").id)]
        assert len(names) == 1 and names[0].startswith("dashboard ")


@pytest.mark.parametrize("target", ["//evil.example/", "https://evil.example/", "/jobs", "/ui\\@evil"])
def test_after_sign_in_only_dashboard_pages_are_followed(
    client: AuthedClient, tokens: dict[str, str], target: str
) -> None:
    with client.anonymous():
        r = client.post("/ui/login", data={"token": tokens["alice"], "next": target}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/ui/"


def test_a_form_from_another_site_or_a_worker_token_does_not_sign_in(client: AuthedClient) -> None:
    from devtools.servers import WORKER_TOKEN

    with client.anonymous():
        foreign = client.post("/ui/login", data={"token": "x"}, headers={"Origin": "https://evil.example"})
        assert foreign.status_code == 403 and SESSION_COOKIE not in client.cookies
        worker = client.post("/ui/login", data={"token": WORKER_TOKEN})
        assert worker.status_code == 401 and "not a user token" in worker.text


def test_without_a_session_pages_go_to_the_sign_in_form_and_fragments_are_401(client: AuthedClient) -> None:
    with client.anonymous():
        page = client.get("/ui/jobs/1", follow_redirects=False)
        assert page.status_code == 303 and page.headers["location"] == "/ui/login?next=%2Fui%2Fjobs%2F1"
        assert client.get("/ui/fragments/jobs/1/row").status_code == 401
        assert client.get("/", follow_redirects=False).headers["location"] == "/ui/"
        form = client.get("/ui/login")
        assert form.status_code == 200 and 'name="password"' in form.text


def test_a_write_with_the_cookie_needs_the_csrf_token(browser: AuthedClient) -> None:
    job = browser.post("/jobs", json=pretrain_body(), headers={"X-CSRF-Token": csrf_token(session(browser))})
    assert job.status_code == 201, job.text
    forged = browser.post(f"/jobs/{job.json()['id']}/cancel")  # what another site's form could send
    assert forged.status_code == 403 and "CSRF" in forged.json()["detail"]
    assert browser.get(f"/jobs/{job.json()['id']}").json()["status"] == "queued"
    good = browser.post(f"/jobs/{job.json()['id']}/cancel", headers={"X-CSRF-Token": csrf_token(session(browser))})
    assert good.status_code == 200 and good.json()["status"] == "cancelled"
    no_field = browser.post("/ui/submit", data={"text": json.dumps(pretrain_body()), "format": "json"})
    assert no_field.status_code == 403 and browser.get("/jobs").json()["data"][0]["id"] == job.json()["id"]


def test_pages_are_never_cached_and_load_only_the_services_own_files(browser: AuthedClient) -> None:
    for path in ("/ui/", "/ui/submit", "/ui/login"):
        r = browser.get(path)
        assert r.status_code == 200
        assert r.headers["cache-control"] == "no-store"
        assert "default-src 'self'" in r.headers["content-security-policy"]
        assets = re.findall(r"""(?:src|href)=["']([^"'#]+)["']""", r.text)
        loaded = [a for a in assets if a.endswith((".js", ".css", ".svg"))]
        assert loaded and all(a.startswith("/ui/static/") for a in loaded), loaded
        for asset in loaded:
            assert browser.get(asset).status_code == 200, asset


def test_the_table_shows_your_jobs_and_an_admin_everyones_with_owners(
    client: AuthedClient, browser: AuthedClient, tokens: dict[str, str]
) -> None:
    with client.as_user(tokens["bob"]):
        bobs = submit(client, pretrain_body(name="bobs-job"))
    mine = browser.get("/ui/").text
    assert "bobs-job" not in mine and "No jobs yet" in mine
    with client.as_user(tokens["root"]):
        everyone = client.get("/ui/").text
        assert "bobs-job" in everyone and '<td class="owner">bob</td>' in everyone
        only_alice = client.get("/ui/?owner=alice").text
        assert "bobs-job" not in only_alice
    other = browser.get(f"/ui/jobs/{bobs['id']}")
    assert other.status_code == 404 and "bobs-job" not in other.text
    assert browser.get(f"/ui/fragments/jobs/{bobs['id']}/row").status_code == 404
    assert browser.get(f"/ui/compare?ids={bobs['id']}").status_code == 404
    assert browser.get(f"/ui/jobs/{bobs['id']}/log.txt").status_code == 404
    assert browser.get(f"/ui/submit?from_job={bobs['id']}").status_code == 404
    assert "bobs-job" not in browser.get("/ui/?owner=bob").text  # not an admin: an error, not bob's jobs


def ids_in(page: str) -> list[int]:
    return [int(i) for i in re.findall(r'<tr id="job-(\d+)"', page)]


def test_filters_and_paging_happen_on_the_server(client: AuthedClient) -> None:
    made = [submit(client, pretrain_body(name=f"run_{i}%"))["id"] for i in range(55)]
    clf = submit(client, finetune_body(name="classifier"))["id"]
    first = client.get("/ui/").text
    assert ids_in(first) == [clf, *reversed(made)][:50]
    cursor = re.search(r'id="older" href="/ui/\?([^"]+)"', first)
    assert cursor is not None
    second = client.get("/ui/?" + cursor.group(1).replace("&amp;", "&")).text
    assert ids_in(second) == list(reversed(made))[49:]
    assert ids_in(client.get("/ui/?kind=finetune").text) == [clf]
    assert ids_in(client.get("/ui/?name=RUN_5").text) == [made[54], made[53], made[52], made[51], made[50], made[5]]
    assert ids_in(client.get("/ui/?name=_1%25").text) == [made[1]]  # % and _ are the characters, not wildcards
    assert "pick a status" in client.get("/ui/?status=bogus").text


def test_the_submit_form_shows_each_refused_field_next_to_its_line(browser: AuthedClient) -> None:
    csrf = csrf_token(session(browser))
    body = pretrain_body(train={"epochs": 2, "batch_size": 64, "lr": -1})
    text = json.dumps(body, indent=2)
    r = browser.post("/ui/submit", data={"text": text, "format": "json", "csrf": csrf})
    assert r.status_code == 422
    error = re.search(r'data-field="train.lr" data-line="(\d+)"', r.text)
    assert error is not None and '"lr": -1' in text.splitlines()[int(error.group(1)) - 1]
    assert "greater than 0" in r.text and "&#34;lr&#34;: -1" in r.text  # the text comes back as typed
    broken = browser.post("/ui/submit", data={"text": '{\n  "kind": "pretrain",\n}', "format": "json", "csrf": csrf})
    assert broken.status_code == 422 and "line 3: this is not JSON" in broken.text
    yaml_bad = browser.post("/ui/submit", data={"text": "kind: pretrain\nmodel: [", "format": "yaml", "csrf": csrf})
    assert yaml_bad.status_code == 422 and "this is not YAML" in yaml_bad.text
    assert browser.get("/jobs").json()["data"] == []


def test_a_pipeline_from_the_submit_form_is_stored_whole_or_not_at_all(browser: AuthedClient) -> None:
    csrf = csrf_token(session(browser))
    bad = [pretrain_body(), finetune_body(train={"epochs": 0})]
    r = browser.post("/ui/submit", data={"text": json.dumps(bad, indent=2), "format": "json", "csrf": csrf})
    assert r.status_code == 422 and 'data-field="job 2: train.epochs"' in r.text
    assert browser.get("/jobs").json()["data"] == []  # the pretrain was not kept either
    import yaml

    good = browser.post(
        "/ui/submit",
        data={"text": yaml.safe_dump([pretrain_body(), finetune_body()]), "format": "yaml", "csrf": csrf},
        follow_redirects=False,
    )
    assert good.status_code == 303 and good.headers["location"] == "/ui/"
    clf, ae = browser.get("/jobs").json()["data"]
    assert clf["depends_on"] == ae["id"] and clf["spec"]["model"]["init"] == {"from": "job", "job_id": ae["id"]}


def test_submit_again_opens_the_editor_with_the_jobs_spec(browser: AuthedClient) -> None:
    made = browser.post(
        "/jobs", json=pretrain_body(name="again-me"), headers={"X-CSRF-Token": csrf_token(session(browser))}
    )
    job = made.json()
    page = browser.get(f"/ui/submit?from_job={job['id']}").text
    editor = re.search(r'<textarea name="text"[^>]*>(.*?)</textarea>', page, re.S)
    assert editor is not None
    import html

    assert json.loads(html.unescape(editor.group(1))) == job["spec"]


def test_compare_lists_the_fields_that_differ_and_the_results(client: AuthedClient) -> None:
    a = submit(client, pretrain_body(name="a", train={"epochs": 2, "batch_size": 64, "lr": 0.01}))
    b = submit(client, pretrain_body(name="b", train={"epochs": 2, "batch_size": 64, "lr": 0.001}))
    for job, loss in ((a, 0.25), (b, 0.5)):
        token = claim_job(client, job["id"])
        finish(client, job["id"], token, result={"primary_metric": "test_loss", "test_loss": loss})
    page = client.get(f"/ui/compare?ids={a['id']},{b['id']}").text
    diff = page[page.index('id="spec-diff"') : page.index("</table>", page.index('id="spec-diff"'))]
    assert "train.lr" in diff and "0.001" in diff and "name" in diff and "dataset.name" not in diff
    results = page[page.index('id="results"') :]
    assert "0.25" in results and "0.5" in results
    assert client.get("/ui/compare?ids=1,x").status_code == 422
    assert client.get("/ui/compare?ids=" + ",".join(["1"] * 11)).status_code == 422


def test_the_log_downloads_as_text_with_its_attempts(client: AuthedClient) -> None:
    job = submit(client, pretrain_body())
    token = claim_job(client, job["id"])
    lines = [{"seq": i, "stream": "stdout", "time": 1.7e9 + i, "text": f"hello {i}"} for i in range(3)]
    r = client.post(f"/worker/jobs/{job['id']}/logs", json={"lease_token": token, "lines": lines})
    assert r.status_code == 200, r.text
    text = client.get(f"/ui/jobs/{job['id']}/log.txt")
    assert text.headers["content-disposition"] == f'attachment; filename="job-{job["id"]}-log.txt"'
    body = text.text.splitlines()
    assert body[0] == "----- attempt 1 -----"
    assert [line.split(" ", 2)[2].strip() for line in body[1:] if "stdout" in line] == ["hello 0", "hello 1", "hello 2"]


def test_sign_out_revokes_the_session(browser: AuthedClient) -> None:
    value = session(browser)
    r = browser.post("/ui/logout", data={"csrf": csrf_token(value)}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/ui/login"
    browser.cookies.set(SESSION_COOKIE, value)  # kept by someone: it no longer works
    assert browser.get("/me").status_code == 401
    assert browser.get("/ui/", follow_redirects=False).status_code == 303


def test_the_dashboard_forms_ignore_what_they_do_not_expect(browser: AuthedClient) -> None:
    for path, data in (
        ("/ui/submit", {"text": "x" * 10, "format": "toml", "csrf": "x"}),
        ("/ui/login", {"token": "y" * 5000}),
    ):
        r = browser.post(path, data=data)
        assert 400 <= r.status_code < 500, (path, r.status_code)


def test_page_data_is_json_in_a_script_tag_that_cannot_end_early(client: AuthedClient) -> None:
    job = submit(client, pretrain_body(name="</script><script>alert(1)</script>"))
    page = client.get(f"/ui/compare?ids={job['id']}").text
    data = re.search(r'<script type="application/json" id="page-data">(.*?)</script>', page, re.S)
    assert data is not None and json.loads(data.group(1))["names"] == ["</script><script>alert(1)</script>"]
    assert "<script>alert(1)" not in page


HOSTILE_TEXTS = [
    ("yaml", "name: 2024-13-45"),
    ("yaml", "a: !!int abc"),
    ("yaml", "a: !!timestamp foo"),
    ("yaml", "a: !!bool maybe"),
    ("yaml", "[" * 3000),
    ("yaml", "a: &a [1, 2]\nb: *a"),
    ("yaml", "!!python/object/apply:os.system ['true']"),
    ("yaml", "- 1\n- 2\n- 3"),
    ("json", "1" * 5000),
    ("json", "[" * 100_000),
    ("json", '{"kind": "pretrain", "train": {"lr": NaN}}'),
    ("json", "[1, 2]"),
    ("json", '"a string"'),
    ("json", json.dumps([pretrain_body(), {"kind": "finetune", "model": "x"}])),
    ("json", json.dumps([pretrain_body(), {"kind": "finetune", "model": 1}])),
]


def test_whatever_text_the_submit_form_gets_the_answer_is_the_editor_with_a_reason(browser: AuthedClient) -> None:
    csrf = csrf_token(session(browser))
    for fmt, text in HOSTILE_TEXTS:
        r = browser.post("/ui/submit", data={"text": text, "format": fmt, "csrf": csrf})
        assert r.status_code == 422, (fmt, text[:60], r.status_code)
        assert 'class="field-error"' in r.text, (fmt, text[:60])
    assert browser.get("/jobs").json()["data"] == []


def test_yaml_aliases_are_refused_before_they_expand(browser: AuthedClient) -> None:
    levels = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    levels += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    bomb = "kind: pretrain\n" + "\n".join(levels) + "\nbad: *a8\n"  # a billion leaves in 700 bytes
    r = browser.post("/ui/submit", data={"text": bomb, "format": "yaml", "csrf": csrf_token(session(browser))})
    assert r.status_code == 422 and "aliases" in r.text


def test_many_errors_are_shown_twenty_at_most(browser: AuthedClient) -> None:
    body = {**pretrain_body(), **{f"extra_{i}": i for i in range(500)}}
    r = browser.post(
        "/ui/submit", data={"text": json.dumps(body, indent=1), "format": "json", "csrf": csrf_token(session(browser))}
    )
    assert r.status_code == 422
    assert r.text.count('class="field-error"') == 20 and "and 481 more errors" in r.text


def test_refused_fields_are_named_without_the_kind_and_arch_pydantic_adds(browser: AuthedClient) -> None:
    body = pretrain_body(model={"arch": "mlp_autoencoder", "hidden": "wide", "bottleneck": 8})
    r = browser.post(
        "/ui/submit", data={"text": json.dumps(body), "format": "json", "csrf": csrf_token(session(browser))}
    )
    assert r.status_code == 422 and 'data-field="model.hidden"' in r.text


@pytest.mark.parametrize(
    "path", ["/ui/jobs/{}", "/ui/jobs/{}/log.txt", "/ui/fragments/jobs/{}/row", "/ui/submit?from_job={}"]
)
def test_a_job_id_of_any_length_is_not_found(browser: AuthedClient, path: str) -> None:
    for job_id in ("1" * 5000, "1" * 11, "0", "-1", "\u0661"):
        r = browser.get(path.format(job_id))
        assert r.status_code in (404, 422), (path, job_id[:12], r.status_code)


def test_an_expired_session_signs_in_again_and_comes_back_to_the_same_page(client: AuthedClient) -> None:
    with client.anonymous():
        r = client.get("/ui/compare?ids=1,2", follow_redirects=False)
        assert r.headers["location"] == "/ui/login?next=%2Fui%2Fcompare%3Fids%3D1%2C2"
        form = client.post("/ui/logout", data={"csrf": "x"}, follow_redirects=False)
        assert form.status_code == 303 and form.headers["location"] == "/ui/login?next=%2Fui%2F"


def test_token_sign_ins_are_throttled_and_a_session_never_outlives_its_token(
    client: AuthedClient, db: Database, settings: Any
) -> None:
    with db.write() as tx:
        user = accounts.user_named(tx, "bob")
        short = accounts.issue_token(tx, user, TokenKind.USER, "short", expires_in_days=0.01).token
    with client.anonymous():
        assert client.post("/ui/login", data={"token": short}, follow_redirects=False).status_code == 303
        with db.read() as tx:
            tokens = {t.name.split()[0]: t.expires_at for t in accounts.list_tokens(tx, user.id)}
        assert tokens["dashboard"] <= tokens["short"]
        client.cookies.clear()
        codes = [client.post("/ui/login", data={"token": f"tj_00000000_{i}"}).status_code for i in range(30)]
    assert codes[0] == 401 and codes[-1] == 429  # 4 x TRAINJOBS_LOGIN_MAX_FAILURES per address


def test_every_dashboard_form_route_checks_the_csrf_field() -> None:
    from fastapi.routing import APIRoute

    from app.api.auth import check_form_csrf
    from app.core.config import Settings
    from app.main import create_app
    from tests.api.test_route_auth import every_route

    app = create_app(Settings(_env_file=None))  # type: ignore[call-arg]
    writes = [
        r
        for r in every_route(app)
        if isinstance(r, APIRoute) and r.path.startswith("/ui") and r.methods - {"GET", "HEAD"}
    ]
    assert {r.path for r in writes} == {"/ui/login", "/ui/logout", "/ui/submit"}
    for route in writes:
        checked = any(d.call is check_form_csrf for d in route.dependant.dependencies)
        assert checked or route.path == "/ui/login", f"{route.path} writes without the form's CSRF check"


def test_a_sweep_page_shows_the_best_setting_the_ranked_settings_and_every_trial(
    browser: AuthedClient, tokens: dict[str, str]
) -> None:
    body = {
        "name": "lr sweep",
        "base": pretrain_body(),
        "parameters": {"train.lr": {"values": [0.01, 0.001]}},
        "seeds": [0, 1],
        "metric": "test_loss",
    }
    sweep = browser.post("/sweeps", json=body, headers={"X-CSRF-Token": csrf_token(session(browser))}).json()
    browser.worker_token = WORKER_TOKEN
    for loss in (0.5, 0.7, 0.2, 0.3):  # lr 0.01: mean 0.6; lr 0.001: mean 0.25, the best
        job = browser.post("/worker/claim", json={"worker_id": "w", "device": "cpu"}).json()
        finish(browser, job["id"], job["lease_token"], result={"test_loss": loss})

    listed = browser.get("/ui/sweeps")
    assert listed.status_code == 200 and f'href="/ui/sweeps/{sweep["id"]}"' in listed.text and "lr sweep" in listed.text
    r = browser.get(f"/ui/sweeps/{sweep['id']}")
    assert r.status_code == 200 and r.headers["content-security-policy"].startswith("default-src 'self'")
    best = re.search(r'<section class="best" id="best">(.*?)</section>', r.text, re.S)
    assert best is not None and "train.lr=0.001" in best.group(1) and "0.25" in best.group(1)
    settings = re.search(r'<table class="grid" id="settings">(.*?)</table>', r.text, re.S)
    assert settings is not None
    ranked = re.findall(r"train\.lr=([0-9.]+)", settings.group(1))
    assert ranked == ["0.001", "0.01"]  # best (lowest mean loss) first
    trials = re.search(r'<table class="grid" id="trials">(.*?)</table>', r.text, re.S)
    assert trials is not None and trials.group(1).count("<tr data-trial=") == 4
    data = json.loads(
        re.search(r'<script type="application/json" id="page-data">(.*?)</script>', r.text, re.S).group(1)
    )  # type: ignore[union-attr]
    assert data["parameters"] == ["train.lr"] and [t["value"] for t in data["trials"]] == [0.5, 0.7, 0.2, 0.3]
    assert 'id="delete"' in r.text and 'id="cancel"' not in r.text
    job_page = browser.get(f"/ui/jobs/{data['trials'][0]['job_ids'][0]}")
    assert f'<a href="/ui/sweeps/{sweep["id"]}">sweep {sweep["id"]}</a>, trial 0' in job_page.text


def test_another_users_sweep_page_is_a_404(browser: AuthedClient, tokens: dict[str, str]) -> None:
    with browser.as_user(tokens["bob"]):
        theirs = browser.post("/sweeps", json={"base": pretrain_body(), "seeds": [0]}).json()
    assert browser.get(f"/ui/sweeps/{theirs['id']}").status_code == 404
    assert f"/ui/sweeps/{theirs['id']}" not in browser.get("/ui/sweeps").text
    assert browser.get("/ui/sweeps/abc").status_code == 404
