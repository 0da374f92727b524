"""A sweep: one job spec run over a grid or random draws of its fields, each setting for every seed.

``expand`` turns a ``SweepSpec`` into its trials, each validated as the job (or pretrain -> finetune
pair, with ``then``) it will run; the first bad trial raises ``InvalidRequest`` naming the trial and
the field, so a sweep is stored whole or not at all (app/core/sweeps.py).
"""

from __future__ import annotations

import copy
import itertools
import json
import math
import random
import re
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, ValidationInfo, field_validator, model_validator

from app.core.errors import InvalidRequest
from app.core.specs.base import Strict, Text, check_json
from app.core.specs.fields import field_parts
from app.core.specs.jobs import AnyJobSpec, FinetuneSpec, PretrainSpec, parse_job_spec

MAX_TRIALS = 1000
"""Trials in one sweep at most (a trial with ``then`` is two jobs)."""
SEGMENT = re.compile(r"^(?:[A-Za-z_][A-Za-z0-9_]{0,99}|[0-9]{1,4})$")
PLACEHOLDER_ID = 1
"""The pretrain id a ``then`` finetune is checked with before its trial's pretrain exists."""

RESULT_METRICS = {
    "finetune": (
        *("test_accuracy", "best_test_accuracy", "test_loss"),
        *("train_loss", "train_accuracy", "val_loss", "val_accuracy"),
    ),
    "pretrain": ("test_loss", "best_test_loss", "train_loss", "val_loss"),
}
"""What a finished job of each kind has in its result, to rank trials by."""


MAX_DEPTH = 16
"""A sweep's base, then and each value nest at most this deep (a job spec nests about five)."""


def storable(value: Any, where: str) -> Any:
    """A JSON value a trial's spec may hold (before pydantic or a copy walks it: depth first)."""
    check_json(value, where, MAX_DEPTH)
    return value


class Values(Strict):
    """Try each of these values (grid: all of them; random: one drawn per trial)."""

    values: list[Any] = Field(min_length=1, max_length=1000)

    @field_validator("values", mode="before")
    @classmethod
    def _storable_and_distinct(cls, value: Any) -> Any:
        if isinstance(value, list):
            storable(value, "values")
            seen = [json.dumps(v, sort_keys=True) for v in value]
            if len(set(seen)) != len(seen):
                raise ValueError("each value once (a repeated value would run the same trials twice)")
        return value


class Distribution(Strict):
    """Draw a value per trial (random sweeps only)."""

    distribution: Literal["uniform", "log_uniform", "int_uniform"]
    min: float = Field(allow_inf_nan=False)
    max: float = Field(allow_inf_nan=False)

    @model_validator(mode="after")
    def _range(self) -> Distribution:
        if not self.min < self.max:
            raise ValueError("min must be less than max")
        if self.distribution == "log_uniform" and self.min <= 0:
            raise ValueError("log_uniform needs min > 0")
        if self.distribution == "int_uniform" and not (self.min.is_integer() and self.max.is_integer()):
            raise ValueError("int_uniform needs whole numbers for min and max")
        return self

    def draw(self, rng: random.Random) -> float | int:
        if self.distribution == "int_uniform":
            return rng.randint(int(self.min), int(self.max))
        if self.distribution == "log_uniform":
            return math.exp(rng.uniform(math.log(self.min), math.log(self.max)))
        return rng.uniform(self.min, self.max)


class SweepSpec(Strict):
    """What ``POST /sweeps`` takes."""

    name: Text | None = Field(None, max_length=200)
    base: dict[str, Any] = Field(description="A job spec, as for POST /jobs: what every trial starts from.")
    then: dict[str, Any] | None = Field(
        None,
        description="A finetune spec run after each trial's pretrain (base must be a pretrain), starting from it; "
        "its fields are swept as then.<path>.",
    )
    method: Literal["grid", "random"] = "grid"
    parameters: dict[str, Values | Distribution] = Field(
        default_factory=dict,
        max_length=20,
        description="Dotted paths into base (e.g. train.lr; then.train.lr for then), each with values or a distribution.",
    )
    num_trials: int | None = Field(None, ge=1, le=MAX_TRIALS, description="Random sweeps: settings drawn.")
    seeds: list[Annotated[int, Field(ge=0, le=2**31 - 1)]] | None = Field(
        None, min_length=1, max_length=100, description="Run each setting once per seed (train.seed)."
    )
    random_seed: int = Field(0, ge=0, le=2**63 - 1, description="Seeds the random draws: same seed, same trials.")
    max_concurrent: int | None = Field(None, ge=1, le=10_000, description="Trials running at once at most.")
    metric: str | None = Field(
        None, max_length=100, description="The result field trials are ranked by; default: the job's primary metric."
    )
    mode: Literal["max", "min"] | None = Field(None, description="Default: max for accuracy-like metrics, else min.")

    @field_validator("base", "then", mode="before")
    @classmethod
    def _storable_spec(cls, value: Any, info: ValidationInfo) -> Any:
        return storable(value, str(info.field_name))

    @field_validator("parameters")
    @classmethod
    def _paths(cls, value: dict[str, Values | Distribution]) -> dict[str, Values | Distribution]:
        for path in value:
            parts = path.split(".")
            if len(parts) > 10 or not all(SEGMENT.match(p) for p in parts):
                raise ValueError(f"'{path}' is not a dotted path of field names (e.g. train.lr)")
            if path in ("seed", "then", "train.seed", "then.train.seed"):
                raise ValueError(
                    f"'{path}' is not a parameter: give seeds, and each setting runs (and is averaged) over them"
                )
        return value

    @field_validator("seeds")
    @classmethod
    def _distinct(cls, value: list[int] | None) -> list[int] | None:
        if value is not None and len(set(value)) != len(value):
            raise ValueError("each seed once")
        return value

    @model_validator(mode="after")
    def _method_fits(self) -> SweepSpec:
        if self.method == "grid":
            if self.num_trials is not None:
                raise ValueError("num_trials is for method 'random'; a grid runs every combination")
            drawn = [p for p, v in self.parameters.items() if isinstance(v, Distribution)]
            if drawn:
                raise ValueError(f"a grid needs values for every parameter; {drawn[0]} has a distribution")
        elif self.num_trials is None:
            raise ValueError("method 'random' needs num_trials")
        if self.then is None and any(p.split(".")[0] == "then" for p in self.parameters):
            raise ValueError("then.* parameters need a then spec")
        return self

    def setting_count(self) -> int:
        """How many settings ``settings`` makes, counted without making them."""
        if self.method == "random":
            return self.num_trials or 0
        return math.prod(len(v.values) for v in self.parameters.values() if isinstance(v, Values))

    def settings(self) -> list[dict[str, Any]]:
        """Each distinct setting of the parameters, in order (grid: the product; random: the draws)."""
        if self.method == "grid":
            names = list(self.parameters)
            choices = [v.values for v in self.parameters.values() if isinstance(v, Values)]
            return [dict(zip(names, combo, strict=True)) for combo in itertools.product(*choices)]
        rng = random.Random(self.random_seed)
        return [
            {
                path: rng.choice(p.values) if isinstance(p, Values) else p.draw(rng)
                for path, p in self.parameters.items()
            }
            for _ in range(self.num_trials or 0)
        ]


@dataclass(frozen=True)
class Trial:
    """One point of a sweep: its parameter values (``seed`` among them when the sweep has seeds) and the
    job it runs, or with ``then`` the pretrain and the finetune that starts from it."""

    index: int
    params: dict[str, Any]
    spec: AnyJobSpec
    then: FinetuneSpec | None = None

    @property
    def label(self) -> str:
        return trial_label(self.index, self.params)


def trial_label(index: int, params: dict[str, Any]) -> str:
    shown = ", ".join(f"{k}={json.dumps(v)}" for k, v in params.items())
    return f"trial {index}" + (f" ({shown})" if shown else "")


def setting_key(params: dict[str, Any]) -> str:
    """The trial's parameter setting apart from its seed: trials that differ only by seed share it."""
    return json.dumps({k: v for k, v in params.items() if k != "seed"}, sort_keys=True)


def put(body: dict[str, Any], path: str, value: Any) -> None:
    """Set the field at a dotted path of a raw spec, making the objects on the way (list items by index)."""
    *parents, last = path.split(".")
    node: Any = body
    for key in parents:
        if isinstance(node, list) and key.isdigit() and int(key) < len(node):
            node = node[int(key)]
        elif isinstance(node, dict):
            node = node.setdefault(key, {})
        else:
            raise ValueError(f"{path}: '{key}' is inside something that is not an object")
    if isinstance(node, list) and last.isdigit() and int(last) < len(node):
        node[int(last)] = copy.deepcopy(value)
    elif isinstance(node, dict):
        node[last] = copy.deepcopy(value)
    else:
        raise ValueError(f"{path}: '{last}' is inside something that is not an object")


def _body(template: dict[str, Any], params: dict[str, Any], prefix: str | None, seed: int | None) -> dict[str, Any]:
    body = copy.deepcopy(template)
    for path, value in params.items():
        if path == "seed":
            continue
        head, _, rest = path.partition(".")
        if prefix is None and head != "then":
            put(body, path, value)
        elif prefix is not None and head == prefix and rest:
            put(body, rest, value)
    if seed is not None:
        put(body, "train.seed", seed)
    return body


def _parsed(body: dict[str, Any], trial: str, where: str) -> AnyJobSpec:
    try:
        return parse_job_spec(body)
    except ValidationError as exc:
        error = exc.errors()[0]
        loc = field_parts(error["loc"])
        field = ".".join(str(p) for p in loc)
        raise InvalidRequest(f"{trial}: {where}.{field}: {error['msg']}", ("body", where, *loc)) from None
    except (TypeError, ValueError) as exc:
        raise InvalidRequest(f"{trial}: {where}: {exc}", ("body", where)) from None


def _trial(spec: SweepSpec, index: int, params: dict[str, Any]) -> Trial:
    seed = params.get("seed")
    label = trial_label(index, params)
    try:
        base_body = _body(spec.base, params, None, seed)
        then_body = None if spec.then is None else _body(spec.then, params, "then", seed)
    except ValueError as exc:
        raise InvalidRequest(f"{label}: {exc}", ("body", "parameters")) from None
    job = _parsed(base_body, label, "base")
    if then_body is None:
        return Trial(index, params, job)
    if not isinstance(job, PretrainSpec):
        raise InvalidRequest("with then, base must be a pretrain job (each trial's finetune starts from it)", ("body",))
    model = then_body.get("model")
    if isinstance(model, dict):
        if model.get("init", {"from": "job"}) != {"from": "job"}:
            raise InvalidRequest(
                "then.model.init: leave it out; each finetune starts from its trial's pretrain",
                ("body", "then", "model", "init"),
            )
        model["init"] = {"from": "job", "job_id": PLACEHOLDER_ID}
    then = _parsed(then_body, label, "then")
    if not isinstance(then, FinetuneSpec):
        raise InvalidRequest("then must be a finetune job", ("body", "then", "kind"))
    return Trial(index, params, job, then)


def expand(spec: SweepSpec) -> list[Trial]:
    """Every trial of the sweep, validated; InvalidRequest names the first bad one."""
    seeds: list[int | None] = list(spec.seeds) if spec.seeds is not None else [None]
    count = spec.setting_count()
    if count * len(seeds) > MAX_TRIALS:
        raise InvalidRequest(
            f"this sweep has {count} settings x {len(seeds)} seeds = {count * len(seeds)} trials; at most {MAX_TRIALS}",
            ("body", "parameters"),
        )
    trials: list[Trial] = []
    for setting, seed in itertools.product(spec.settings(), seeds):
        params = setting if seed is None else {**setting, "seed": seed}
        trials.append(_trial(spec, len(trials), params))
    return trials


def ranking(spec: SweepSpec, trial: Trial) -> tuple[str, bool]:
    """The result field trials are ranked by and whether higher is better; InvalidRequest for one no job reports."""
    final = trial.then or trial.spec
    known = RESULT_METRICS[final.kind.value]
    metric = spec.metric or known[0]
    if metric not in known:
        raise InvalidRequest(
            f"metric: a {final.kind.value} job's result has no '{metric}'; give one of: {', '.join(known)}",
            ("body", "metric"),
        )
    higher = spec.mode == "max" if spec.mode is not None else "acc" in metric
    return metric, higher
