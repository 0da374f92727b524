"""Where a validation error is, said as a person writes the field (``model.hidden``): pydantic's union
tags (the kind, arch, dataset and init names it puts in an error's place after the field they
choose) and validator names left out."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from app.core.specs.datasets import DATASET_NAMES
from app.core.specs.jobs import JOB_KINDS
from app.core.specs.networks import FINETUNE_ARCHS, PRETRAIN_ARCHS

UNION_TAGS = frozenset({*JOB_KINDS, *PRETRAIN_ARCHS, *FINETUNE_ARCHS, *DATASET_NAMES, "scratch", "imagenet", "job"})


def field_parts(loc: Iterable[Any]) -> list[str | int]:
    """The parts of an error's place that name fields (and list items)."""
    parts = [p for p in loc if p != "body"]
    return [
        p
        for i, p in enumerate(parts)
        if not str(p).startswith(("function-", "tagged-union"))
        and not (p in UNION_TAGS and (i == 0 or parts[i - 1] in ("model", "dataset", "init")))
    ]


def field_name(loc: Iterable[Any]) -> str:
    """A validation error's place as a dotted field, or "(the job)" for the whole of it."""
    return ".".join(str(p) for p in field_parts(loc)) or "(the job)"
