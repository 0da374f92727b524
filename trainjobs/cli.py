"""``trainjobs``: the service from a terminal (typer + rich). Every command that prints data takes
``--json``; output is plain (no colours, no bars) when it is not a terminal. Exit codes: 0 done,
1 failed (or an error), 2 cancelled; ``watch`` and ``--follow`` end with the job's."""

from __future__ import annotations

import csv
import getpass
import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from trainjobs import credentials
from trainjobs.cli_sweeps import sweep_app
from trainjobs.client import Client
from trainjobs.errors import TrainjobsError, ValidationError, field_of
from trainjobs.experiments import experiment_app
from trainjobs.models import Job
from trainjobs.terminal import EXIT_CODES, JsonOpt, ServerOpt, client, err, fail, out, print_json, read_spec, set_path

app = typer.Typer(help="Run PyTorch training jobs on a trainjobs service.", no_args_is_help=True, add_completion=False)
tokens_app = typer.Typer(help="Your API tokens.", no_args_is_help=True)
app.add_typer(tokens_app, name="tokens")
app.add_typer(sweep_app, name="sweep")
app.add_typer(experiment_app, name="experiment")
SEED_PIPELINE = (
    {"kind": "pretrain", "preset": "seed", "name": "seed-pretrain"},
    {"kind": "finetune", "preset": "seed", "name": "seed-finetune", "model": {"arch": "mlp", "num_classes": 10}},
)


def main() -> None:
    try:
        app()
    except ValidationError as exc:
        err.print("error: the service refused the request:", markup=False)
        for e in exc.errors:
            err.print(f"  {field_of(e)}: {e.get('msg')}", markup=False)
        sys.exit(1)
    except TrainjobsError as exc:
        err.print(f"error: {exc}", markup=False)
        sys.exit(1)


# --- who ---------------------------------------------------------------------------


@app.command()
def login(
    server: ServerOpt = None,
    token: Annotated[str | None, typer.Option(help="A user token (tj_...) to save.")] = None,
    username: Annotated[str | None, typer.Option(help="Sign in with a password instead (asked for).")] = None,
) -> None:
    """Save the server and a token to ~/.config/trainjobs/credentials.json (mode 0600)."""
    found = credentials.resolve(server, token)
    with Client(found.server, token or "-") as tj:
        if username is not None:
            token = tj.login(username, getpass.getpass(f"password for {username}: "))
        elif token is None:
            token = typer.prompt("token", hide_input=True)
            tj.http.headers["Authorization"] = f"Bearer {token}"
        me = Client(found.server, token).me()
    path = credentials.save(found.server, token)
    out.print(f"logged in to {found.server} as {me['username']} (saved to {path})", markup=False)


@app.command()
def logout() -> None:
    """Remove the saved credentials."""
    out.print("logged out" if credentials.forget() else "not logged in", markup=False)


@app.command()
def whoami(server: ServerOpt = None, as_json: JsonOpt = False) -> None:
    """The user your token acts for."""
    with client(server) as tj:
        me = tj.me()
    print_json(me) if as_json else out.print(
        f"{me['username']}{' (admin)' if me.get('is_admin') else ''} at {tj.server}"
    )


# --- submitting --------------------------------------------------------------------


@app.command()
def submit(
    file: Annotated[str, typer.Argument(help="A job as JSON or YAML; - for standard input.")],
    set_: Annotated[list[str] | None, typer.Option("--set", help="Edit a field: train.lr=0.01 (repeatable).")] = None,
    name: Annotated[str | None, typer.Option(help="The job's name.")] = None,
    priority: Annotated[int | None, typer.Option(help="Higher runs first.")] = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Watch it until it ends.")] = False,
    idempotency_key: Annotated[str | None, typer.Option(help="The same key and body: the same job.")] = None,
    server: ServerOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Submit a job."""
    body = read_spec(file)
    for assignment in set_ or []:
        set_path(body, assignment)
    with client(server) as tj:
        job = tj.submit(body, idempotency_key, name=name, priority=priority)
        print_json(job.model_dump(mode="json")) if as_json else out.print(f"submitted job {job.id} ({job.kind})")
        if follow:
            raise typer.Exit(watch_job(tj, job.id, quiet=as_json))


@app.command()
def pipeline(
    pretrain: Annotated[str | None, typer.Argument(help="The pretrain job (JSON or YAML).")] = None,
    finetune: Annotated[str | None, typer.Argument(help="The finetune that starts from it.")] = None,
    preset: Annotated[str | None, typer.Option(help="seed: the article's two jobs.")] = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Watch both until they end.")] = False,
    server: ServerOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Submit a pretrain and a finetune that starts from its encoder."""
    if preset == "seed":
        first_body, second_body = SEED_PIPELINE
    elif preset is not None:
        raise fail(f"--preset {preset!r}: the one preset is 'seed'")
    elif pretrain is None or finetune is None:
        raise fail("give PRETRAIN and FINETUNE files, or --preset seed")
    else:
        first_body, second_body = read_spec(pretrain), read_spec(finetune)
    with client(server) as tj:
        first, second = tj.pipeline(first_body, second_body)
        if as_json:
            print_json({"pretrain": first.model_dump(mode="json"), "finetune": second.model_dump(mode="json")})
        else:
            out.print(f"submitted pretrain job {first.id} and finetune job {second.id} (starts from {first.id})")
        if follow:
            code = watch_job(tj, first.id, quiet=as_json)
            raise typer.Exit(code if code else watch_job(tj, second.id, quiet=as_json))


# --- reading -----------------------------------------------------------------------


def progress_text(job: Job) -> str:
    if job.progress is None:
        return ""
    return f"epoch {job.progress.epoch}/{job.progress.epochs}"


def best_metric(job: Job) -> str:
    result = job.result or {}
    for key in ("test_accuracy", "val_accuracy", "test_loss", "val_loss", "train_loss"):
        if isinstance(result.get(key), int | float):
            return f"{key} {result[key]:.4g}"
    return ""


def duration(job: Job) -> str:
    seconds = job.duration_seconds
    if seconds is None:
        return ""
    return f"{seconds:.0f}s" if seconds < 120 else f"{seconds / 60:.1f}m"


@app.command("list")
def list_jobs(
    status: Annotated[str | None, typer.Option(help="queued, running, succeeded, failed, cancelled")] = None,
    kind: Annotated[str | None, typer.Option(help="pretrain or finetune")] = None,
    owner: Annotated[str | None, typer.Option(help="Admins: a username, or * for everyone's.")] = None,
    limit: Annotated[int, typer.Option(help="At most this many, newest first.")] = 50,
    server: ServerOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Your jobs, newest first."""
    with client(server) as tj:
        found = list(tj.list(status=status, kind=kind, owner=owner, limit=limit, page_size=min(limit, 500)))
    if as_json:
        print_json([j.model_dump(mode="json") for j in found])
        return
    table = Table("id", "name", "kind", "status", "progress", "best", "duration", "worker", box=None)
    for j in found:
        cells = [
            str(j.id),
            j.name or "",
            j.kind,
            j.status,
            progress_text(j),
            best_metric(j),
            duration(j),
            j.worker or "",
        ]
        table.add_row(*(Text(c) for c in cells))  # a name may hold [brackets]: text, not markup
    out.print(table)


@app.command()
def show(job_id: int, server: ServerOpt = None, as_json: JsonOpt = False) -> None:
    """One job, whole."""
    with client(server) as tj:
        job = tj.get(job_id)
    if as_json:
        print_json(job.model_dump(mode="json"))
        return
    out.print(f"job {job.id} ({job.kind}{', ' + job.name if job.name else ''}): {job.status}", markup=False)
    for label, value in [
        ("progress", progress_text(job)),
        ("attempt", f"{job.attempt} of {job.max_attempts}"),
        ("worker", f"{job.worker or ''} {job.device or ''}".strip()),
        ("duration", duration(job)),
        ("result", json.dumps(job.result) if job.result else ""),
        ("error", job.error or ""),
    ]:
        if value:
            out.print(f"  {label}: {value}", markup=False)


def watch_job(tj: Client, job_id: int, *, quiet: bool = False) -> int:
    """Follow the job's event stream until it ends: a live bar with the latest metrics on a terminal, a
    line per status change otherwise; its exit code."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    bar = Progress(
        TextColumn("job {task.fields[job]}"), BarColumn(), TextColumn("{task.fields[state]}"), TimeRemainingColumn(),
        TextColumn("{task.fields[latest]}"), console=err, disable=quiet or not err.is_terminal, transient=True,
    )  # fmt: skip
    latest: dict[str, float] = {}
    last = ""
    with bar:
        task = bar.add_task("", total=None, job=job_id, state="", latest="")
        for event in tj.events(job_id):
            data = event["data"]
            if event["event"] == "status":
                progress = data.get("progress") or {}
                state = f"{data['status']} epoch {progress.get('epoch', 0)}/{progress.get('epochs', '?')}"
                if progress.get("step"):
                    state += f" step {progress['step']}"
                bar.update(task, total=progress.get("epochs") or None, completed=progress.get("epoch", 0), state=state)
                if state != last and not quiet and not err.is_terminal:
                    err.print(f"job {job_id}: {state}", markup=False)
                last = state
            elif event["event"] == "metrics":
                latest.update({p["name"]: p["value"] for p in data["points"]})
                shown = [f"{k} {v:.4g}" for k, v in latest.items() if k.endswith(("loss", "accuracy"))][:4]
                if "samples_per_second" in latest:
                    shown.append(f"{latest['samples_per_second']:.0f} samples/s")
                bar.update(task, latest="  ".join(shown))
    job = tj.get(job_id)
    if not quiet:
        summary = best_metric(job) or (job.error or "").split("\n")[0]
        out.print(f"job {job_id} {job.status}{': ' + summary if summary else ''}", markup=False)
    return EXIT_CODES.get(job.status, 1)


@app.command()
def watch(job_id: int, server: ServerOpt = None) -> None:
    """Follow a job until it ends; exit 0 succeeded, 1 failed, 2 cancelled."""
    with client(server) as tj:
        raise typer.Exit(watch_job(tj, job_id))


@app.command()
def logs(
    job_id: int,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new lines until the job ends.")] = False,
    tail: Annotated[int | None, typer.Option(help="Only the last N lines.")] = None,
    attempt: Annotated[int | None, typer.Option(help="Only this attempt's lines.")] = None,
    server: ServerOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """A job's output: its stdout, stderr and the worker's notes on it."""
    with client(server) as tj:
        for line in tj.logs(job_id, follow=follow, tail=tail, attempt=attempt):
            if as_json:
                print(json.dumps(line.model_dump(mode="json"), default=str), flush=True)
            else:
                prefix = "" if line.stream == "stdout" else f"[{line.stream}] "
                print(f"{prefix}{line.text}", flush=True)


@app.command()
def metrics(
    job_id: int,
    name: Annotated[list[str] | None, typer.Option("--name", help="Only these series (repeatable).")] = None,
    as_csv: Annotated[bool, typer.Option("--csv", help="name,step,epoch,value,time rows.")] = False,
    plot: Annotated[Path | None, typer.Option(help="Write a PNG of the curves here.")] = None,
    log_y: Annotated[bool, typer.Option("--log-y", help="Logarithmic value axis in the plot.")] = False,
    max_points: Annotated[int | None, typer.Option(help="Downsample each series to about this many.")] = None,
    server: ServerOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """A job's metric series: the last and best of each, or every point (--csv, --json), or a plot."""
    with client(server) as tj:
        found = tj.metrics(job_id, name, max_points)
    series: dict[str, list[dict[str, Any]]] = found["series"]
    if plot is not None:
        from trainjobs.plot import plot_series

        plot_series(series, plot, title=f"job {job_id}", log_y=log_y)
        err.print(f"wrote {plot}", markup=False)  # stdout stays the data (--json, --csv)
    if as_json:
        print_json(found)
    elif as_csv:
        writer = csv.writer(sys.stdout)
        writer.writerow(["name", "step", "epoch", "value", "time"])
        for series_name, points in series.items():
            for p in points:
                writer.writerow([series_name, p["step"], p.get("epoch"), p["value"], p["time"]])
    elif plot is None:
        table = Table("series", "points", "last", "best", "best at step", box=None)
        for series_name, s in found["summary"].items():
            count = str(len(series.get(series_name, [])))
            table.add_row(series_name, count, f"{s['last']:.6g}", f"{s['best']:.6g}", str(s["best_step"]))
        out.print(table)


@app.command()
def checkpoints(job_id: int, server: ServerOpt = None, as_json: JsonOpt = False) -> None:
    """A job's checkpoints."""
    with client(server) as tj:
        found = tj.checkpoints(job_id)
    if as_json:
        print_json([c.model_dump(mode="json") for c in found])
        return
    table = Table("tag", "format", "epoch", "step", "metric", "size", "sha256", box=None)
    for c in found:
        metric = "" if c.metric_value is None else f"{c.metric_value:.4g}"
        table.add_row(c.tag, c.format, str(c.epoch), str(c.step), metric, f"{c.size / 1e6:.1f} MB", c.sha256[:12])
    out.print(table)


@app.command()
def download(
    job_id: int,
    tag: Annotated[str | None, typer.Option(help="best or last (default: best, else last).")] = None,
    format: Annotated[str, typer.Option(help="pt (the whole checkpoint) or safetensors (weights).")] = "pt",
    output: Annotated[Path | None, typer.Option("-o", "--output", help="Where to write it.")] = None,
    server: ServerOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Download a checkpoint: resumes a partial download, checks the sha256."""
    dest = output or Path(f"job-{job_id}-{tag or 'best'}.{'safetensors' if format == 'safetensors' else 'pt'}")
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

    bar = Progress(
        TextColumn(str(dest)), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
        console=err, disable=as_json or not err.is_terminal, transient=True,
    )  # fmt: skip
    with client(server) as tj, bar:
        task = bar.add_task("download", total=None)
        path = tj.download_checkpoint(
            job_id,
            dest,
            tag=tag,
            format=format,
            on_progress=lambda done, total: bar.update(task, completed=done, total=total),
        )
    size = path.stat().st_size
    print_json({"path": str(path), "size": size}) if as_json else out.print(f"wrote {path} ({size / 1e6:.1f} MB)")


@app.command()
def cancel(job_id: int, server: ServerOpt = None, as_json: JsonOpt = False) -> None:
    """Cancel a job: at once if queued, at its worker's next heartbeat if running."""
    with client(server) as tj:
        job = tj.cancel(job_id)
    print_json(job.model_dump(mode="json")) if as_json else out.print(f"job {job_id}: {job.status}")


@app.command()
def delete(job_id: int, server: ServerOpt = None) -> None:
    """Delete a finished job with its metrics, logs and checkpoints."""
    with client(server) as tj:
        tj.delete(job_id)
    out.print(f"deleted job {job_id}")


@app.command("workers")
def list_workers(server: ServerOpt = None, as_json: JsonOpt = False) -> None:
    """Admins: the workers, their devices, what they run, and their last hour."""
    with client(server) as tj:
        found = tj.workers()
    if as_json:
        print_json(found)
        return
    table = Table(
        "id", "host", "version", "devices", "free", "running", "last seen", "ok/failed (1 h)", "state", box=None
    )
    for w in found:
        devices = ", ".join(f"{d['name']}{' (busy)' if d.get('busy') else ''}" for d in w.get("devices", []))
        cells = [
            w["id"], w["host"], w["version"], devices, f"{w.get('free', '?')}/{len(w.get('devices', []))}",
            ",".join(map(str, w["running"])), str(w["last_seen"])[:19],
            f"{w['succeeded_last_hour']}/{w['failed_last_hour']}", "lost" if w["lost"] else "live",
        ]  # fmt: skip
        table.add_row(*(Text(str(c)) for c in cells))  # text, not markup: an id may hold [brackets]
    out.print(table)


# --- tokens ------------------------------------------------------------------------


@tokens_app.command("create")
def tokens_create(
    name: str,
    expires_in_days: Annotated[float | None, typer.Option(help="Default: never.")] = None,
    server: ServerOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """A new user token (shown once)."""
    with client(server) as tj:
        made = tj.create_token(name, expires_in_days)
    print_json(made) if as_json else out.print(made["token"], markup=False)


@tokens_app.command("list")
def tokens_list(server: ServerOpt = None, as_json: JsonOpt = False) -> None:
    """Your tokens (never their secrets)."""
    with client(server) as tj:
        found = tj.tokens()
    if as_json:
        print_json(found)
        return
    table = Table("id", "name", "kind", "prefix", "created", "last used", "expires", box=None)
    for t in found:
        table.add_row(
            str(t["id"]), t["name"], t["kind"], t["prefix"], str(t["created_at"])[:19],
            str(t.get("last_used_at") or "")[:19], str(t.get("expires_at") or "")[:19],
        )  # fmt: skip
    out.print(table)


@tokens_app.command("revoke")
def tokens_revoke(token_id: int, server: ServerOpt = None) -> None:
    """Revoke a token: it stops working at once."""
    with client(server) as tj:
        tj.revoke_token(token_id)
    out.print(f"revoked token {token_id}")


if __name__ == "__main__":
    main()
