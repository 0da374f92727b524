"""The API starts without torch, and app.core stays free of fastapi and torch."""

from __future__ import annotations

import subprocess
import sys


def imported_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print(' '.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return set(out.split())


def test_app_main_does_not_import_torch() -> None:
    modules = imported_after("import app.main")
    assert "fastapi" in modules
    assert "torch" not in modules and "torchvision" not in modules


def test_core_imports_neither_fastapi_nor_torch() -> None:
    modules = imported_after(
        "import app.core.jobs, app.core.leases, app.core.checkpoints, app.core.metrics, app.core.specs, "
        "app.core.protocol, app.core.migrate"
    )
    assert not {"fastapi", "starlette", "torch"} & modules


def test_the_sdk_and_cli_import_neither_the_service_nor_torch() -> None:
    """``import trainjobs`` on a laptop needs httpx and pydantic, not fastapi, sqlalchemy or torch."""
    modules = imported_after("import trainjobs, trainjobs.cli, trainjobs.events")
    assert "httpx" in modules and "pydantic" in modules
    assert not {"fastapi", "starlette", "sqlalchemy", "torch", "app", "worker"} & modules
