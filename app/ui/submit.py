"""The dashboard's submit page: a JSON or YAML editor with templates (the article's two presets and the
digits pipeline); a refused job is shown again with each error next to the field (and line) it names.

The text is one job, or a list of two: a pretrain and a finetune that starts from it (as
``trainjobs pipeline``), stored in one transaction: both or neither.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import yaml
from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import RedirectResponse, Response
from pydantic import ValidationError
from sqlalchemy.orm import Session

from app.api.auth import CurrentUser, FormCsrf
from app.api.deps import DatabaseDep, SettingsDep, WakeupDep
from app.api.routes.jobs import check_submittable, store_job
from app.core.accounts import Caller
from app.core.config import Settings
from app.core.db import Database
from app.core.errors import InvalidRequest, NotFound, TrainjobsError
from app.core.specs import job_spec_adapter
from app.core.specs.fields import field_name
from app.ui import views
from app.ui.pages import job_id_of, visible
from app.ui.render import page

router = APIRouter(prefix="/ui", include_in_schema=False)
DIGITS_PRETRAIN = {
    "kind": "pretrain",
    "name": "digits-ae",
    "dataset": {"name": "digits"},
    "model": {"arch": "mlp_autoencoder", "hidden": [64], "bottleneck": 16},
    "train": {"epochs": 3, "batch_size": 64},
}
DIGITS_FINETUNE = {
    "kind": "finetune",
    "name": "digits-clf",
    "dataset": {"name": "digits", "labels_per_class": 20},
    "model": {"arch": "mlp", "num_classes": 10},
    "train": {"epochs": 3, "batch_size": 32, "optimizer": "sgd", "lr": 0.05, "momentum": 0.9},
}
TEMPLATES: dict[str, tuple[str, Any]] = {
    "digits-pipeline": (
        "Digits pipeline: a pretrain, then a finetune from its encoder",
        [DIGITS_PRETRAIN, DIGITS_FINETUNE],
    ),
    "digits-pretrain": ("Digits autoencoder (pretrain)", DIGITS_PRETRAIN),
    "seed-pretrain": ("The article's pretrain (CIFAR-10 MLP autoencoder)", {"kind": "pretrain", "preset": "seed"}),
    "seed-finetune": ("The article's finetune (ResNet-18 from ImageNet)", {"kind": "finetune", "preset": "seed"}),
}
Format = Annotated[str, Form(pattern="^(json|yaml)$")]
MAX_ERRORS = 20
"""Errors shown at most (each is looked for in the text): the rest are counted."""


def as_text(value: Any, fmt: str) -> str:
    if fmt == "yaml":
        return yaml.safe_dump(value, sort_keys=False, default_flow_style=None, width=100)
    return json.dumps(value, indent=2)


TEMPLATE_TEXTS = {key: {"json": as_text(v, "json"), "yaml": as_text(v, "yaml")} for key, (_, v) in TEMPLATES.items()}
"""What the page's script puts in the editor for each template, in either format."""


def editor(request: Request, text: str, fmt: str, errors: list[dict[str, Any]], status_code: int = 200) -> Response:
    return page(
        request,
        "submit.html",
        status_code=status_code,
        text=text,
        format=fmt,
        templates=TEMPLATES,
        template_texts=TEMPLATE_TEXTS,
        errors=errors,
    )


@router.get("/submit")
def submit_form(
    request: Request,
    db: DatabaseDep,
    caller: CurrentUser,
    template: Annotated[str, Query(max_length=100)] = "digits-pipeline",
    from_job: Annotated[str, Query(max_length=20)] = "",
) -> Response:
    """The editor, filled from a template or (``?from_job=ID``, "submit again") from a job's spec."""
    source, fmt = TEMPLATES.get(template, TEMPLATES["digits-pipeline"])[1], "json"
    if from_job:
        try:
            spec = visible(db, caller, job_id_of(from_job) or 0).spec
        except NotFound:
            return page(request, "404.html", status_code=404, what=f"job {from_job}")
        source = spec
    return editor(request, as_text(source, fmt), fmt, [])


class NoAliases(yaml.SafeLoader):
    """YAML without anchors' aliases (``*name``): a few hundred bytes of them can stand for a billion values."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()  # type: ignore[no-untyped-call]
            raise yaml.MarkedYAMLError(
                problem="aliases (*name) are not accepted: write the value out", problem_mark=event.start_mark
            )
        return super().compose_node(parent, index)


def parse(text: str, fmt: str) -> Any:
    """The text as data; InvalidRequest with the line of a syntax error."""
    kind = "YAML" if fmt == "yaml" else "JSON"
    try:
        return yaml.load(text, Loader=NoAliases) if fmt == "yaml" else json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidRequest(f"line {exc.lineno}: this is not JSON: {exc.msg}", ("body",)) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        raise InvalidRequest(f"{where}this is not YAML: {getattr(exc, 'problem', None) or exc}", ("body",)) from None
    except RecursionError:
        raise InvalidRequest(f"this {kind} is nested too deeply", ("body",)) from None
    except (ValueError, TypeError, KeyError, AttributeError, OverflowError):
        # A tagged YAML value it cannot be (!!int abc, a 13th month), a number of 5,000 digits.
        raise InvalidRequest(
            f"this {kind} holds a value that cannot be read (a number too long, or a bad tag)", ("body",)
        ) from None


class Refused(Exception):
    """Job ``index`` of the text was refused for ``cause``."""

    def __init__(self, index: int, cause: ValidationError | TrainjobsError) -> None:
        super().__init__(f"job {index + 1} was refused")  # not str(cause): it can be a repr of all the input
        self.index, self.cause = index, cause


def store(db: Database, caller: Caller, settings: Settings, bodies: list[Any]) -> list[int]:
    """Validate and store each job, in one transaction; a finetune after a pretrain starts from it."""
    with db.write() as session:
        made: list[int] = []
        for index, body in enumerate(bodies):
            try:
                made.append(store_one(session, caller, settings, body, made[-1] if made else None))
            except (ValidationError, TrainjobsError) as exc:
                raise Refused(index, exc) from exc
        return made


def store_one(session: Session, caller: Caller, settings: Settings, body: Any, base: int | None) -> int:
    """Job ``body``; a finetune after a pretrain (``base``) starts from that pretrain's encoder."""
    if (
        base is not None
        and isinstance(body, dict)
        and body.get("kind") == "finetune"
        and isinstance(body.get("model", {}), dict)
    ):
        body = {**body, "model": {**(body.get("model") or {}), "init": {"from": "job", "job_id": base}}}
    spec = job_spec_adapter.validate_python(body)
    check_submittable(spec, settings)
    job, _ = store_job(session, caller, settings, spec)
    return job.id


def errors_of(exc: ValidationError | TrainjobsError, text: str, index: int, bodies: int) -> list[dict[str, Any]]:
    """Each error as the field it names (in job ``index`` of ``bodies``), the line it is on, and what is wrong."""
    if isinstance(exc, ValidationError):
        found = [(tuple(e["loc"]), e["msg"]) for e in exc.errors(include_url=False, include_input=False)]
    elif isinstance(exc, InvalidRequest):
        found = [(tuple(p for p in exc.loc if p != "body"), exc.message)]
    else:
        found = [((), exc.message)]
    start = views.line_of_job(text, index) if bodies > 1 else 0
    out = []
    if len(found) > MAX_ERRORS:
        more = len(found) - MAX_ERRORS + 1
        found = [*found[: MAX_ERRORS - 1], ((), f"and {more} more errors: mend these and send it again")]
    for loc, msg in found:
        field = field_name(loc)
        out.append(
            {
                "field": f"job {index + 1}: {field}" if bodies > 1 else field,
                "line": views.line_of(text, loc, start),
                "msg": msg,
            }
        )
    return out


@router.post("/submit", response_model=None, dependencies=[FormCsrf])
def submit(
    request: Request,
    db: DatabaseDep,
    caller: CurrentUser,
    settings: SettingsDep,
    wakeup: WakeupDep,
    text: Annotated[str, Form(max_length=200_000)] = "",
    format: Format = "json",
) -> Response:
    """Store the job (or the pipeline) and open it; or the editor again with the errors."""
    bodies: list[Any] = []
    try:
        data = parse(text, format)
        bodies = data if isinstance(data, list) else [data]
        if not 1 <= len(bodies) <= 2:
            raise InvalidRequest("give one job, or a list of two: a pretrain and a finetune that starts from it")
        made = store(db, caller, settings, bodies)
    except (Refused, TrainjobsError) as exc:
        index, cause = (exc.index, exc.cause) if isinstance(exc, Refused) else (0, exc)
        errors = errors_of(cause, text, index, len(bodies))
        return editor(request, text, format, errors, status_code=422)
    wakeup.notify()
    return RedirectResponse(f"/ui/jobs/{made[0]}" if len(made) == 1 else "/ui/", status_code=303)
