"""``trainjobs experiment low-label``: does pre-training help when labels are few? Run through the service.

Each row of the study is one sweep over the same seeds (a seed fixes the labelled subset, the
initialisation and the order of the batches, so rows are compared seed by seed):

- an ``mlp`` finetuned from scratch;
- a plain and a denoising ``mlp_autoencoder`` pretrained on every training image without its label,
  each trial's finetune (``then``) starting from its own pretrain: a full finetune, a linear probe
  (``freeze_backbone``) and, for the denoising one, a probe then a full finetune (``train.phases``);
- a DCGAN pretrained the same way on the digits upscaled to 32x32, then its discriminator as a
  linear probe and as a full finetune, against that discriminator from scratch and as a probe of
  its random weights (``--no-gan`` leaves these out).

It waits for the sweeps, then prints (and writes as Markdown) each row's mean test accuracy, its
spread, and its paired difference against scratch with the seeds it was better on; beside them
scikit-learn's LogisticRegression and SVC on the same split and labelled subset, which it computes
itself with the workers' own data code (that needs the worker extra: torch and scikit-learn).

The hyperparameters (denoising noise 0.5, bottleneck 64, probe lr 1e-2) were chosen by looking at
seeds 0-2 on the test split; the study runs seeds from 100 so its numbers are not the ones the
choice was made on.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer

from trainjobs.client import Client
from trainjobs.models import Sweep
from trainjobs.terminal import ServerOpt, client, err, fail, out

experiment_app = typer.Typer(help="Studies run through the service as sweeps.", no_args_is_help=True)
MLP = {"hidden": [512, 256], "bottleneck": 64}
GAN_WIDTH = 32
"""The DCGAN's width in the study: half the paper's 64, for a 2-core CPU (its features: 4 x 4 x 128)."""
SCRATCH = "`mlp` from scratch"


@dataclass(frozen=True)
class Study:
    dataset: str
    labels_per_class: int | None
    seeds: list[int]
    epochs: int | None = None
    """Every phase's epochs (a quick run); None: the study's own (30 pretrain, 60 finetune, 60 + 30)."""
    gan_rows: bool = True
    """Add the DCGAN's rows (digits upscaled to 32x32; 15 epochs of GAN pretraining)."""

    def epochs_or(self, default: int) -> int:
        return self.epochs if self.epochs is not None else default

    def dataset_spec(self, labelled: bool) -> dict[str, Any]:
        spec: dict[str, Any] = {"name": self.dataset}
        if labelled and self.labels_per_class is not None:
            spec["labels_per_class"] = self.labels_per_class
        return spec

    def finetune(self, *, probe: bool = False, phases: bool = False) -> dict[str, Any]:
        """A finetune of the ``mlp`` (from scratch; under ``then``, from its trial's pretrain)."""
        model: dict[str, Any] = {"arch": "mlp", **MLP}
        train: dict[str, Any] = {"epochs": self.epochs_or(60), "batch_size": 10, "lr": 1e-3}
        if probe:
            model["freeze_backbone"], train["lr"] = True, 1e-2
        if phases:
            del train["epochs"]
            train["phases"] = [
                {"epochs": self.epochs_or(60), "freeze_backbone": True, "lr": 1e-2},
                {"epochs": self.epochs_or(30), "lr": 3e-4},
            ]
        return {
            "kind": "finetune",
            "dataset": self.dataset_spec(True),
            "model": model,
            "train": {"schedule": "cosine", "checkpoint_every_epochs": 1000, **train},
        }

    def discriminator(self, *, probe: bool) -> dict[str, Any]:
        """A finetune of a DCGAN's discriminator (on the digits upscaled to 32x32)."""
        body = self.finetune(probe=probe)
        body["dataset"]["image_size"] = 32
        body["model"] = {"arch": "dcgan_discriminator", "width": GAN_WIDTH, "freeze_backbone": probe}
        return body

    def gan(self) -> dict[str, Any]:
        return {
            "kind": "pretrain",
            "dataset": {**self.dataset_spec(False), "image_size": 32},
            "model": {"arch": "dcgan", "width": GAN_WIDTH, "latent_dim": 100},
            "train": {"epochs": self.epochs_or(15), "batch_size": 64},
        }

    def pretrain(self, noise: float) -> dict[str, Any]:
        return {
            "kind": "pretrain",
            "dataset": self.dataset_spec(False),
            "model": {"arch": "mlp_autoencoder", **MLP, "noise": noise},
            "train": {"epochs": self.epochs_or(30), "batch_size": 64, "lr": 2e-3, "schedule": "cosine"},
        }

    def rows(self) -> dict[str, dict[str, Any]]:
        """Each row's sweep."""
        rows: dict[str, dict[str, Any]] = {SCRATCH: {"base": self.finetune()}}
        plain, denoising = self.pretrain(0.0), self.pretrain(0.5)
        rows["plain autoencoder → full finetune"] = {"base": plain, "then": self.finetune()}
        rows["plain autoencoder → linear probe"] = {"base": plain, "then": self.finetune(probe=True)}
        rows["denoising autoencoder (`noise` 0.5) → full finetune"] = {"base": denoising, "then": self.finetune()}
        rows["denoising autoencoder → linear probe (`freeze_backbone`)"] = {
            "base": denoising,
            "then": self.finetune(probe=True),
        }
        rows["denoising autoencoder → linear probe, then full finetune (`train.phases`)"] = {
            "base": denoising,
            "then": self.finetune(phases=True),
        }
        if self.gan_rows:
            rows["`dcgan_discriminator` from scratch (digits at 32x32)"] = {"base": self.discriminator(probe=False)}
            rows["`dcgan_discriminator`, random weights → linear probe"] = {"base": self.discriminator(probe=True)}
            rows["DCGAN → its discriminator: linear probe"] = {
                "base": self.gan(),
                "then": self.discriminator(probe=True),
            }
            rows["DCGAN → its discriminator: full finetune"] = {
                "base": self.gan(),
                "then": self.discriminator(probe=False),
            }
        return {
            name: {"name": f"low-label: {name}", **body, "seeds": self.seeds, "metric": "test_accuracy"}
            for name, body in rows.items()
        }


@dataclass
class Row:
    name: str
    by_seed: dict[int, float]
    sweep_id: int | None = None
    failed: list[int] = field(default_factory=list)


def row_of(name: str, sweep: Sweep) -> Row:
    by_seed: dict[int, float] = {}
    failed = []
    for trial in sweep.trials:
        seed = int(trial.params.get("seed", trial.index))
        if trial.value is None:
            failed.append(seed)
        else:
            by_seed[seed] = trial.value
    return Row(name, by_seed, sweep.id, failed)


def baselines(study: Study) -> list[Row]:
    """LogisticRegression and SVC on each seed's split and labelled subset, from the workers' data code."""
    try:
        from sklearn.linear_model import LogisticRegression
        from sklearn.svm import SVC

        from app.core.specs import parse_job_spec
        from worker.training.data import load_dataset
    except ImportError as exc:
        err.print(f"(no scikit-learn baselines: {exc}; install the worker extra)", markup=False)
        return []
    rows = [Row("LogisticRegression", {}), Row("SVC", {})]
    for seed in study.seeds:
        spec = parse_job_spec({**study.finetune(), "train": {"seed": seed}})
        splits = load_dataset(spec.dataset, Path("unused"), seed)
        x, y = splits.train.x.flatten(1).float().numpy() / 255.0, splits.train.y.numpy()
        tx, ty = splits.test.x.flatten(1).float().numpy() / 255.0, splits.test.y.numpy()
        for row, model in zip(rows, (LogisticRegression(max_iter=5000), SVC()), strict=True):
            row.by_seed[seed] = float((model.fit(x, y).predict(tx) == ty).mean())
    return rows


def table(rows: list[Row], seeds: list[int]) -> str:
    """The Markdown table: mean ± spread, and the paired difference against scratch (seeds better)."""
    scratch = rows[0].by_seed
    lines = ["| finetune | test accuracy | vs scratch |", "|---|---|---|"]
    for row in rows:
        values = [row.by_seed[s] for s in seeds if s in row.by_seed]
        if not values:
            lines.append(f"| {row.name} | no trial succeeded | |")
            continue
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        cell = f"{100 * statistics.fmean(values):.2f}% ± {100 * spread:.2f}"
        paired = [row.by_seed[s] - scratch[s] for s in seeds if s in row.by_seed and s in scratch]
        versus = ""
        if row is not rows[0] and paired:
            better = sum(d > 0 for d in paired)
            versus = f"{100 * statistics.fmean(paired):+.1f} ({better}/{len(paired)} seeds better)"
        lines.append(f"| {row.name} | {cell} | {versus} |")
    return "\n".join(lines)


def run_study(tj: Client, study: Study, timeout: float) -> list[Row]:
    submitted = {name: tj.submit_sweep(body) for name, body in study.rows().items()}
    for name, sweep in submitted.items():
        err.print(f"sweep {sweep.id}: {name} ({sweep.trial_count} trials)", markup=False)
    return [row_of(name, tj.wait_sweep(sweep.id, timeout=timeout)) for name, sweep in submitted.items()]


def markers(labels_per_class: int | None) -> tuple[str, str]:
    """The comments around the table in a README, one pair per labelled subset (5, ..., all)."""
    key = "all" if labels_per_class is None else str(labels_per_class)
    return f"<!-- low-label:{key}:start -->", f"<!-- low-label:{key}:end -->"


def update_readme(path: Path, text: str, labels_per_class: int | None) -> None:
    start_mark, end_mark = markers(labels_per_class)
    readme = path.read_text()
    start, end = readme.find(start_mark), readme.find(end_mark)
    if start < 0 or end < start:
        raise fail(f"{path} has no {start_mark} ... {end_mark} block to replace")
    path.write_text(readme[: start + len(start_mark)] + "\n" + text + "\n" + readme[end:])


@experiment_app.command("low-label")
def low_label(
    dataset: Annotated[str, typer.Option(help="The dataset every row trains on.")] = "digits",
    labels_per_class: Annotated[int, typer.Option(help="Labelled training images per class; 0: all.")] = 5,
    seeds: Annotated[int, typer.Option(help="Seeds per row (each its own labelled subset).")] = 5,
    first_seed: Annotated[int, typer.Option(help="The first seed (the settings were chosen on 0-2).")] = 100,
    epochs: Annotated[int | None, typer.Option(help="Every phase's epochs, for a quick run.")] = None,
    gan: Annotated[bool, typer.Option(help="Also the DCGAN's rows (digits only).")] = True,
    markdown: Annotated[Path, typer.Option(help="Where to write the table.")] = Path("low-label.md"),
    readme: Annotated[Path | None, typer.Option(help="Also replace the table in this README.")] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for each sweep.")] = 6 * 3600,
    server: ServerOpt = None,
) -> None:
    """Pre-training with few labels, through the service: submits one sweep per row, waits, prints the table."""
    study = Study(
        dataset,
        labels_per_class or None,
        list(range(first_seed, first_seed + seeds)),
        epochs,
        gan and dataset == "digits",
    )
    with client(server) as tj:
        rows = run_study(tj, study, timeout)
    rows += baselines(study) if dataset == "digits" else []
    labels = "all labels" if study.labels_per_class is None else f"{study.labels_per_class} labels per class"
    sweeps = ", ".join(str(r.sweep_id) for r in rows if r.sweep_id is not None)
    command = (
        f"trainjobs experiment low-label --dataset {dataset} --labels-per-class {labels_per_class} --seeds {seeds}"
    )
    if first_seed != 100:
        command += f" --first-seed {first_seed}"
    if epochs is not None:
        command += f" --epochs {epochs}"
    if not gan:
        command += " --no-gan"
    text = (
        f"{table(rows, study.seeds)}\n\n{dataset}, {labels}, seeds {study.seeds[0]}-{study.seeds[-1]} "
        f"(sweeps {sweeps}); made by `{command}`."
    )
    out.print(text, markup=False)
    markdown.write_text(text + "\n")
    if readme is not None:
        update_readme(readme, text, study.labels_per_class)
    failed = {r.name: r.failed for r in rows if r.failed}
    if failed:
        raise fail(f"trials without a result (by seed): {failed}")
