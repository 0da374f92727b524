"""The benchmarks still run: ``python -m bench --quick`` exits 0 and records every number.

Only that they ran is checked here; timings and targets are never asserted (docs/benchmarks.md).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = {
    "training", "service", "small-job", "dispatch", "queue", "api", "load", "metrics", "checkpoints", "dashboard"
}  # fmt: skip
# CPU use of an idle process can round to 0 in a short quick run; a difference of two timings can have any sign;
# counts of failures are 0 when all is well.
NOT_POSITIVE_ALLOWED = (
    "idle worker CPU", "idle API CPU", "service - direct", "answers of 500", "other than 200", "not 200", "shed (503)"
)  # fmt: skip


@pytest.mark.slow
def test_quick_benchmarks_run_and_record_every_number(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--results-dir", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert run.returncode == 0, run.stderr[-4000:]
    assert "| benchmark | measure |" in run.stdout

    files = list(tmp_path.glob("*-quick.json"))
    assert len(files) == 1, files
    document = json.loads(files[0].read_text())
    assert document["mode"] == "quick"
    assert not document["errors"]
    for key in ("cpu_model", "cpu_cores", "torch", "device", "load_average_start"):
        assert document["machine"][key] is not None, key
    assert set(document["benchmarks"]) == BENCHMARKS
    for name, bench in document["benchmarks"].items():
        assert bench["measures"], name
        for measure in bench["measures"]:
            values = [*measure["samples"], measure["median"], measure["min"], measure["max"]]
            assert values, (name, measure["name"])
            for value in values:
                assert math.isfinite(value), (name, measure["name"], value)
                if not any(part in measure["name"] for part in NOT_POSITIVE_ALLOWED):
                    assert value > 0, (name, measure["name"], value)


@pytest.mark.slow
def test_the_gpu_run_runs_on_a_cpu_at_tiny_size(tmp_path: Path) -> None:
    """``python -m bench --gpu`` is for a machine with a GPU; its CPU fallback keeps its code running here."""
    run = subprocess.run(
        [sys.executable, "-m", "bench", "--gpu", "--quick", "--results-dir", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-4000:]
    (path,) = tmp_path.glob("*-quick-gpu.json")
    document = json.loads(path.read_text())
    assert not document["errors"] and set(document["benchmarks"]) == {"gpu"}
    names = {m["name"]: m for m in document["benchmarks"]["gpu"]["measures"]}
    for size in (32, 224):
        for variant in ("reference", "trainjobs"):
            assert names[f"ResNet-18 {size}x{size}: {variant} samples/s"]["median"] > 0
    assert names["whole job: service / direct (pair by pair)"]["median"] > 0
    assert "no GPU here" in " ".join(document["benchmarks"]["gpu"]["notes"])
