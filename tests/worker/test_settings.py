"""The worker's settings have one source of defaults (WorkerSettings); its options read them; a flag wins."""

from __future__ import annotations

from pathlib import Path

import pytest

from worker.__main__ import parse_args, settings_from
from worker.settings import WorkerConfig, WorkerSettings


def resolved(argv: list[str]) -> WorkerSettings:
    defaults = WorkerSettings(_env_file=None)  # type: ignore[call-arg]
    return settings_from(parse_args(argv, defaults), defaults)


def test_defaults_come_from_the_settings_model(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in WorkerSettings.model_fields:
        monkeypatch.delenv(f"TRAINJOBS_{name.upper()}", raising=False)
    settings = resolved([])
    assert settings == WorkerSettings(_env_file=None)  # type: ignore[call-arg]
    assert settings.grace_seconds == 60 and settings.poll_seconds == 5 and settings.prestart is True


def test_the_environment_sets_every_option_and_a_flag_beats_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRAINJOBS_GRACE_SECONDS", "7")
    monkeypatch.setenv("TRAINJOBS_POLL_SECONDS", "2.5")
    monkeypatch.setenv("TRAINJOBS_PRESTART", "off")
    monkeypatch.setenv("TRAINJOBS_START_METHOD", "forkserver")
    monkeypatch.setenv("TRAINJOBS_WORKER_TOKEN", "from-env")
    monkeypatch.setenv("TRAINJOBS_DATA_DIR", "/data/here")
    settings = resolved([])
    assert (settings.grace_seconds, settings.poll_seconds, settings.prestart) == (7, 2.5, False)
    assert settings.start_method == "forkserver" and settings.data_dir == Path("/data/here")
    assert settings.worker_token is not None and settings.worker_token.get_secret_value() == "from-env"
    flagged = resolved(["--grace-seconds", "3", "--prestart", "--token", "from-flag", "--start-method", "spawn"])
    assert (flagged.grace_seconds, flagged.prestart, flagged.start_method) == (3, True, "spawn")
    assert flagged.worker_token is not None and flagged.worker_token.get_secret_value() == "from-flag"
    assert "from-flag" not in repr(flagged)  # a secret is never printed


def test_a_bad_value_in_the_environment_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRAINJOBS_GRACE_SECONDS", "-1")
    with pytest.raises(ValueError, match="grace_seconds"):
        WorkerSettings(_env_file=None)  # type: ignore[call-arg]


def test_each_worker_gets_a_scratch_folder_of_its_own(tmp_path: Path) -> None:
    settings = WorkerSettings(work_dir=tmp_path, _env_file=None)  # type: ignore[call-arg]
    assert WorkerConfig.of(settings, "gpu7:1234/x", "cpu").work_dir == tmp_path / "gpu7_1234_x"


def test_a_bad_setting_stops_the_worker_with_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from worker.__main__ import main

    monkeypatch.setenv("TRAINJOBS_GRACE_SECONDS", "-1")
    assert main([]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("trainjobs-worker: bad setting: grace_seconds") and "\n" not in err
    monkeypatch.delenv("TRAINJOBS_GRACE_SECONDS")
    with pytest.raises(SystemExit) as stopped:
        main(["--threads", "0"])
    assert stopped.value.code == 2 and "must be 1 or more" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("api_url", "allowed"),
    [
        ("http://127.0.0.1:8000", True),
        ("http://localhost:8000", True),
        ("http://[::1]:8000", True),
        ("https://trainjobs.internal", True),
        ("http://trainjobs.internal:8000", False),
        ("http://10.0.0.5:8000", False),
    ],
)
def test_a_token_is_never_sent_in_clear_to_another_machine_unless_told(api_url: str, allowed: bool) -> None:
    from worker.settings import insecure_reason

    settings = WorkerSettings(api_url=api_url, worker_token="tj-secret", _env_file=None)  # type: ignore[call-arg,arg-type]
    reason = insecure_reason(settings)
    assert (reason is None) == allowed
    if reason is not None:
        assert "plain HTTP" in reason and "--allow-insecure-http" in reason and "tj-secret" not in reason
        told = settings.model_copy(update={"allow_insecure_http": True})
        assert insecure_reason(told) is None
    assert insecure_reason(settings.model_copy(update={"worker_token": None})) is None  # nothing to leak


def test_the_worker_refuses_to_start_so(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    from worker.__main__ import main

    monkeypatch.setenv("TRAINJOBS_WORKER_TOKEN", "tj-secret")
    assert main(["--api", "http://10.0.0.5:8000"]) == 2
    err = capsys.readouterr().err
    assert "refusing to send the worker token over plain HTTP to 10.0.0.5" in err and "tj-secret" not in err
