"""Interleaved runs, medians and pair-by-pair ratios: the numbers a noisy machine cannot fake.

Compared variants run in turn (A B A B ...), so a burst of load from elsewhere lands on both;
each is reported as its median with the min-max, and every comparison as the ratio within each
pair, whose median is the headline.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


def interleave(variants: dict[str, Callable[[], Any]], pairs: int, *, warmup: bool = False) -> dict[str, list[Any]]:
    """Run each variant once per round, in the order given, for ``pairs`` rounds.

    With ``warmup``, one round is run first and thrown away (first-call costs: imports, caches).
    """
    if warmup:
        for run in variants.values():
            run()
    results: dict[str, list[Any]] = {name: [] for name in variants}
    for _ in range(pairs):
        for name, run in variants.items():
            results[name].append(run())
    return results


def ratios(numerators: list[float], denominators: list[float]) -> list[float]:
    """Pair by pair: numerators[i] / denominators[i]."""
    return [a / b for a, b in zip(numerators, denominators, strict=True)]


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100), linear between closest ranks."""
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    position = (len(ordered) - 1) * q / 100
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


@dataclass
class Measure:
    """One measured quantity: every sample, summarised by its median and min-max."""

    name: str
    unit: str
    samples: list[float]
    target: str | None = None
    """The issue's target as text, e.g. '>= 1.15'; checked against the median."""
    check: Callable[[float], bool] | None = field(default=None, repr=False)

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def met(self) -> bool | None:
        return None if self.check is None else bool(self.check(self.median))

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "unit": self.unit,
            "samples": self.samples,
            "median": self.median,
            "min": min(self.samples),
            "max": max(self.samples),
            "target": self.target,
            "met": self.met,
        }


def at_least(limit: float) -> Callable[[float], bool]:
    return lambda value: value >= limit


def at_most(limit: float) -> Callable[[float], bool]:
    return lambda value: value <= limit


@dataclass
class Result:
    """What one benchmark measured, with the settings it ran with."""

    name: str
    title: str
    params: dict[str, Any]
    measures: list[Measure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    """Raw data worth keeping that is not a measure (pair order, sizes, tool used)."""

    def add(self, name: str, unit: str, samples: list[float], target: str | None = None, **kw: Any) -> Measure:
        measure = Measure(name, unit, [float(s) for s in samples], target, **kw)
        self.measures.append(measure)
        return measure

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "title": self.title,
            "params": self.params,
            "measures": [m.as_dict() for m in self.measures],
            "notes": self.notes,
            "extra": self.extra,
        }
