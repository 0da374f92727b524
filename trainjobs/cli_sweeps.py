"""``trainjobs sweep``: submit, list, show, watch, cancel, retry and delete sweeps."""

from __future__ import annotations

import json
import time
from typing import Annotated, Any

import typer
from rich.table import Table

from trainjobs.models import Setting, Sweep
from trainjobs.terminal import EXIT_CODES, JsonOpt, ServerOpt, client, err, out, print_json, read_spec, set_path

sweep_app = typer.Typer(help="Sweeps: one job over a grid or random draws of its fields, for every seed.")


def fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.4g}"


def params_text(params: dict[str, Any]) -> str:
    return " ".join(f"{k}={json.dumps(v)}" for k, v in params.items()) or "(base)"


def ranked(sweep: Sweep) -> list[Setting]:
    """Its settings, best mean first (those without a value last)."""
    sign = -1.0 if sweep.mode == "max" else 1.0
    return sorted(sweep.settings, key=lambda s: (s.mean is None, sign * (s.mean or 0.0)))


def print_sweep(sweep: Sweep) -> None:
    counts = ", ".join(f"{n} {s}" for s, n in sweep.counts.items() if n)
    out.print(f"sweep {sweep.id}{' (' + sweep.name + ')' if sweep.name else ''}: {sweep.status}", markup=False)
    out.print(f"  {sweep.trial_count} trials ({counts}); ranked by {sweep.metric} ({sweep.mode})", markup=False)
    table = Table("setting", "mean", "std", "n", "min", "max", box=None)
    for setting in ranked(sweep):
        table.add_row(
            params_text(setting.params), fmt(setting.mean), fmt(setting.std), str(setting.count),
            fmt(setting.min), fmt(setting.max),
        )  # fmt: skip
    out.print(table)
    if sweep.best_setting is not None:
        out.print(f"  best setting: {params_text(sweep.best_setting.params)}", markup=False)
    if sweep.best_trial is not None:
        best = sweep.best_trial
        out.print(
            f"  best trial: {best.index} ({params_text(best.params)}) {sweep.metric} {fmt(best.value)}, "
            f"job {best.job_ids[-1]}",
            markup=False,
        )


def print_trials(sweep: Sweep) -> None:
    table = Table("trial", "params", "status", sweep.metric, "jobs", box=None)
    for trial in sweep.trials:
        table.add_row(
            str(trial.index), params_text(trial.params), trial.status, fmt(trial.value),
            ",".join(map(str, trial.job_ids)),
        )  # fmt: skip
    out.print(table)


def watch_sweep(sweep_id: int, server: str | None, quiet: bool) -> Sweep:
    with client(server) as tj:
        last = ""
        while True:
            sweep = tj.sweep(sweep_id)
            state = ", ".join(f"{n} {s}" for s, n in sweep.counts.items() if n)
            if state != last and not quiet:
                err.print(f"sweep {sweep_id}: {state}", markup=False)
            last = state
            if sweep.finished:
                return sweep
            time.sleep(2)


@sweep_app.command("submit")
def submit(
    file: Annotated[str, typer.Argument(help="A sweep as JSON or YAML (see README, Sweeps); - for standard input.")],
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Edit a field: max_concurrent=2 (repeatable).")
    ] = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Wait for it to end, then show it.")] = False,
    server: ServerOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Submit a sweep: every trial is checked first, then all are stored, or none."""
    body = read_spec(file, "one sweep")
    for assignment in set_ or []:
        set_path(body, assignment)
    with client(server) as tj:
        sweep = tj.submit_sweep(body)
    if not follow:
        print_json(sweep.model_dump(mode="json")) if as_json else out.print(
            f"submitted sweep {sweep.id}: {sweep.trial_count} trials", markup=False
        )
        return
    if not as_json:
        out.print(f"submitted sweep {sweep.id}: {sweep.trial_count} trials", markup=False)
    done = watch_sweep(sweep.id, server, as_json)
    print_json(done.model_dump(mode="json")) if as_json else print_sweep(done)
    raise typer.Exit(EXIT_CODES.get(done.status, 1))


@sweep_app.command("list")
def list_sweeps(
    owner: Annotated[str | None, typer.Option(help="Admins: a username, or * for everyone's.")] = None,
    limit: Annotated[int, typer.Option(help="At most this many, newest first.")] = 50,
    server: ServerOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Your sweeps, newest first."""
    with client(server) as tj:
        found = tj.sweeps(owner=owner, limit=limit)
    if as_json:
        print_json([s.model_dump(mode="json") for s in found])
        return
    table = Table("id", "name", "status", "trials", "succeeded", "failed", "metric", box=None)
    for s in found:
        table.add_row(
            str(s.id), s.name or "", s.status, str(s.trial_count), str(s.counts.get("succeeded", 0)),
            str(s.counts.get("failed", 0)), f"{s.metric} ({s.mode})",
        )  # fmt: skip
    out.print(table)


@sweep_app.command("show")
def show(
    sweep_id: int,
    trials: Annotated[bool, typer.Option("--trials", help="Also every trial.")] = False,
    server: ServerOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """A sweep: counts, every setting's mean and spread over seeds (best first), the best trial."""
    with client(server) as tj:
        sweep = tj.sweep(sweep_id)
    if as_json:
        print_json(sweep.model_dump(mode="json"))
        return
    print_sweep(sweep)
    if trials:
        print_trials(sweep)


@sweep_app.command("watch")
def watch(sweep_id: int, server: ServerOpt = None) -> None:
    """Wait for a sweep to end, then show it; exits 0 if every trial succeeded."""
    done = watch_sweep(sweep_id, server, False)
    print_sweep(done)
    raise typer.Exit(EXIT_CODES.get(done.status, 1))


@sweep_app.command("cancel")
def cancel(sweep_id: int, server: ServerOpt = None, as_json: JsonOpt = False) -> None:
    """Cancel a sweep: its queued trials at once, its running ones at their next heartbeat."""
    with client(server) as tj:
        sweep = tj.cancel_sweep(sweep_id)
    print_json(sweep.model_dump(mode="json")) if as_json else out.print(f"sweep {sweep_id}: cancelling")


@sweep_app.command("retry")
def retry(sweep_id: int, server: ServerOpt = None, as_json: JsonOpt = False) -> None:
    """Run exactly the failed and cancelled trials again (the same jobs, their next attempt)."""
    with client(server) as tj:
        sweep = tj.retry_sweep(sweep_id)
    queued = sweep.counts.get("queued", 0)
    print_json(sweep.model_dump(mode="json")) if as_json else out.print(f"sweep {sweep_id}: {queued} trials queued")


@sweep_app.command("delete")
def delete(sweep_id: int, server: ServerOpt = None) -> None:
    """Delete a finished sweep with its trials' jobs, metrics and checkpoints."""
    with client(server) as tj:
        tj.delete_sweep(sweep_id)
    out.print(f"deleted sweep {sweep_id}")
