"""The dashboard's files ship in the package: the vendored ones are exactly those the manifest names
(versions, licences, SHA-256, as scripts/vendor_assets.py wrote them), and nothing of ours points at
another host."""

from __future__ import annotations

import hashlib
import json
import re
import sys
from pathlib import Path

from app.ui.render import HERE, STATIC

VENDOR = STATIC / "vendor"


def test_every_vendored_file_is_in_the_manifest_with_its_version_licence_and_digest() -> None:
    manifest = json.loads((VENDOR / "manifest.json").read_text())
    assert set(manifest) == {"uplot", "swagger-ui", "redoc"}
    for name, entry in manifest.items():
        folder = VENDOR / name
        assert re.fullmatch(r"\d+\.\d+\.\d+", entry["version"]) and entry["licence"] in ("MIT", "Apache-2.0")
        assert "LICENSE" in entry["files"]
        assert {p.name for p in folder.iterdir()} == set(entry["files"]), name
        for file, digest in entry["files"].items():
            assert hashlib.sha256((folder / file).read_bytes()).hexdigest() == digest, f"{name}/{file} changed"


def test_the_refresh_script_pins_what_the_manifest_holds_and_strips_what_would_leave_the_service() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
    import vendor_assets

    manifest = json.loads((VENDOR / "manifest.json").read_text())
    assert {n: a["version"] for n, a in vendor_assets.ASSETS.items()} == {n: e["version"] for n, e in manifest.items()}
    js = b"var a=1;\n//# sourceMappingURL=x.js.map\n"
    assert vendor_assets.patched("x.js", js) == b"var a=1;"
    logo = b'src:"https://cdn.redoc.ly/redoc/logo-mini.svg"'
    assert b"cdn.redoc.ly" not in vendor_assets.patched("redoc.standalone.js", logo)
    redoc = (VENDOR / "redoc" / "redoc.standalone.js").read_bytes()
    assert b"cdn.redoc.ly" not in redoc and b"sourceMappingURL=redoc" not in redoc


def test_our_templates_scripts_and_styles_name_no_other_host() -> None:
    ours = [*HERE.glob("templates/*.html"), *STATIC.glob("*.js"), *STATIC.glob("*.css")]
    assert len(ours) > 10
    for path in ours:
        text = path.read_text()
        hosts = re.findall(r"(?:https?:)?//[a-z0-9.-]+\.[a-z]{2,}", text)
        assert hosts == [], f"{path.name}: {hosts}"
