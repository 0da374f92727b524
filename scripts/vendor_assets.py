"""Refresh the vendored files of the dashboard (uPlot), /docs (Swagger UI) and /redoc (ReDoc) from npm's registry: ``python scripts/vendor_assets.py``.

Run by a developer (it needs the internet); the service never downloads anything. Pin a new version
in ``ASSETS``, run it, look at the diff, commit. It writes the files under app/ui/static/vendor/ and
``manifest.json`` there (name, version, source, licence, SHA-256 of each file), which
tests/ui/test_assets.py holds the files to.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import tarfile
import urllib.request
from pathlib import Path

VENDOR = Path(__file__).resolve().parents[1] / "app" / "ui" / "static" / "vendor"
ASSETS = {
    "uplot": {
        "package": "uplot",
        "version": "1.6.32",
        "licence": "MIT",
        "files": {
            "dist/uPlot.iife.min.js": "uPlot.iife.min.js",
            "dist/uPlot.min.css": "uPlot.min.css",
            "LICENSE": "LICENSE",
        },
    },
    "swagger-ui": {
        "package": "swagger-ui-dist",
        "version": "5.33.1",
        "licence": "Apache-2.0",
        "files": {
            "swagger-ui-bundle.js": "swagger-ui-bundle.js",
            "swagger-ui.css": "swagger-ui.css",
            "favicon-32x32.png": "favicon-32x32.png",
            "LICENSE": "LICENSE",
        },
    },
    "redoc": {
        "package": "redoc",
        "version": "2.5.4",
        "licence": "MIT",
        "files": {
            "bundles/redoc.standalone.js": "redoc.standalone.js",
            "bundles/redoc.standalone.js.LICENSE.txt": "redoc.standalone.js.LICENSE.txt",
            "LICENSE": "LICENSE",
        },
    },
}
SOURCE_MAP = re.compile(rb"\n*(//# sourceMappingURL=[\w.-]+|/\*# sourceMappingURL=[\w.-]+ ?\*/)\s*\Z")
"""Dropped: a browser's developer tools would otherwise ask the service for a map it does not have."""
PATCHES = {
    "redoc.standalone.js": [
        # ReDoc's "API docs by Redocly" badge loads its logo from Redocly's CDN: an empty image instead.
        (
            b"https://cdn.redoc.ly/redoc/logo-mini.svg",
            b"data:image/svg+xml,%3Csvg xmlns='http://www.w3.org/2000/svg'/%3E",
        ),
    ]
}
"""What would make a page ask another host for something, replaced in the vendored file."""


def patched(name: str, content: bytes) -> bytes:
    content = SOURCE_MAP.sub(b"", content)
    for old, new in PATCHES.get(name, []):
        if old not in content:
            raise SystemExit(f"{name}: {old!r} is gone; check the new version for requests to other hosts")
        content = content.replace(old, new)
    return content


def fetch(package: str, version: str) -> tarfile.TarFile:
    url = f"https://registry.npmjs.org/{package}/-/{package}-{version}.tgz"
    with urllib.request.urlopen(url, timeout=60) as response:
        return tarfile.open(fileobj=io.BytesIO(response.read()), mode="r:gz")


def manifest_entry(name: str, asset: dict, folder: Path) -> dict:
    return {
        "version": asset["version"],
        "source": f"https://www.npmjs.com/package/{asset['package']}/v/{asset['version']}",
        "licence": asset["licence"],
        "files": {
            out: hashlib.sha256((folder / out).read_bytes()).hexdigest() for out in sorted(asset["files"].values())
        },
    }


def main() -> None:
    manifest = {}
    for name, asset in ASSETS.items():
        folder = VENDOR / name
        folder.mkdir(parents=True, exist_ok=True)
        with fetch(asset["package"], asset["version"]) as tar:
            for inside, out in asset["files"].items():
                member = tar.extractfile(f"package/{inside}")
                if member is None:
                    raise SystemExit(f"{name} {asset['version']}: no {inside} in the package")
                (folder / out).write_bytes(patched(out, member.read()))
        manifest[name] = manifest_entry(name, asset, folder)
        print(f"{name} {asset['version']}: {', '.join(asset['files'].values())}")
    (VENDOR / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")


if __name__ == "__main__":
    main()
