"""GAN pretraining: a DCGAN (Radford et al., after pytorch/examples' ``dcgan``) for 32x32 and 64x64 images.

- Generator: the noise vector through transposed 4x4 convolutions, BatchNorm and ReLU, doubling a 4x4
  grid up to the image, ending in Tanh (64x64: four stages; 32x32: one fewer, so it fits the size).
- Discriminator: strided 4x4 convolutions with LeakyReLU(0.2), BatchNorm on every layer after the
  first, down to 4x4, then one 4x4 convolution to a logit. Without that last layer it is the
  ``encoder`` (the model's attribute, as for every network here) that a ``dcgan_discriminator``
  finetune starts from: 4 x 4 x (its last channels) features.
- Weights from N(0, 0.02) (BatchNorm scales from N(1, 0.02)); both networks train with Adam at
  ``train.lr`` (2e-4 unless given), betas (0.5, 0.999); the generator's loss is the non-saturating one.

Metrics: ``d_loss``, ``g_loss``, ``d_real`` and ``d_fake`` (the discriminator's mean output on real and
on generated images) at log steps and as each epoch's means; ``test_d_loss``, ``test_d_real`` and
``test_d_fake`` on the test images against generated ones. Each epoch a grid of 64 images generated
from a fixed noise is written as ``samples-epoch-E.png``, an artifact of the job. A GAN's losses say
little of its features, so its ``best`` checkpoint is simply its newest.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from app.core.registry import Registry
from app.core.specs import AnyJobSpec, DcganModel, FinetuneModel, PretrainSpec, Shape, TrainSpec
from app.core.specs.jobs import GAN_METRICS
from app.core.specs.networks import dcgan_multipliers

from .context import TrainingContext
from .data import Splits, mix_seed
from .nets import CLASSIFIERS, Classifier
from .task import Batch, Runtime, Task

BETAS = (0.5, 0.999)
SAMPLES = 64
"""Images in each epoch's sample grid (8 x 8)."""
MAX_SAMPLE_GRIDS = 100
"""Sample grids a run writes at most (a long one: every k-th epoch, and the last)."""


def discriminator_body(shape: Shape, width: int) -> nn.Sequential:
    """The discriminator without its last layer: the encoder, ``width * 2**(n-1)`` x 4 x 4 features, flattened."""
    channels = [width * m for m in dcgan_multipliers(shape[1])]
    layers: list[nn.Module] = [nn.Conv2d(shape[0], channels[0], 4, 2, 1, bias=False), nn.LeakyReLU(0.2, inplace=True)]
    for c_in, c_out in itertools.pairwise(channels):
        layers += [nn.Conv2d(c_in, c_out, 4, 2, 1, bias=False), nn.BatchNorm2d(c_out), nn.LeakyReLU(0.2, inplace=True)]
    return nn.Sequential(*layers, nn.Flatten())


def generator(shape: Shape, width: int, latent_dim: int) -> nn.Sequential:
    ups = [width * m for m in reversed(dcgan_multipliers(shape[1]))]
    layers: list[nn.Module] = [
        nn.Unflatten(1, (latent_dim, 1, 1)),
        nn.ConvTranspose2d(latent_dim, ups[0], 4, 1, 0, bias=False),
        nn.BatchNorm2d(ups[0]),
        nn.ReLU(inplace=True),
    ]
    for c_in, c_out in itertools.pairwise(ups):
        layers += [nn.ConvTranspose2d(c_in, c_out, 4, 2, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers, nn.ConvTranspose2d(ups[-1], shape[0], 4, 2, 1, bias=False), nn.Tanh())


def init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Conv2d | nn.ConvTranspose2d):
        nn.init.normal_(module.weight, 0.0, 0.02)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


class Dcgan(nn.Module):
    """``encoder`` + ``critic`` is the discriminator (a logit per image); ``generator`` makes images."""

    def __init__(self, shape: Shape, width: int, latent_dim: int) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        self.encoder = discriminator_body(shape, width)
        last = width * dcgan_multipliers(shape[1])[-1]
        self.critic = nn.Sequential(
            nn.Unflatten(1, (last, 4, 4)), nn.Conv2d(last, 1, 4, 1, 0, bias=False), nn.Flatten()
        )
        self.generator = generator(shape, width, latent_dim)
        self.apply(init_weights)

    def discriminate(self, x: Tensor) -> Tensor:
        out: Tensor = self.critic(self.encoder(x)).squeeze(1)
        return out

    def forward(self, z: Tensor) -> Tensor:
        out: Tensor = self.generator(z)
        return out


GANS: Registry[Callable[[Any, Shape], Dcgan]] = Registry("gan arch")
"""Pretrain ``model.arch`` of a GAN -> (its model spec, the image shape) -> the GAN (the others: AUTOENCODERS)."""


@GANS.register("dcgan")
def build_dcgan(model: DcganModel, shape: Shape) -> Dcgan:
    return Dcgan(shape, model.width, model.latent_dim)


@CLASSIFIERS.register("dcgan_discriminator")
def dcgan_classifier(model: FinetuneModel, shape: Shape, num_classes: int) -> Classifier:
    body = discriminator_body(shape, model.dcgan_width)
    body.apply(init_weights)
    return Classifier(body, model.dcgan_width * dcgan_multipliers(shape[1])[-1] * 16, num_classes)


class GanTask(Task):
    primary = "test_d_loss"
    higher_is_better = False
    logged = GAN_METRICS
    model: Dcgan

    def __init__(self, model: Dcgan, runtime: Runtime, train: TrainSpec) -> None:
        self.model, self.runtime, self.seed, self.epochs = model, runtime, train.seed, train.epochs
        self.sample_every = max(1, math.ceil(train.epochs / MAX_SAMPLE_GRIDS))
        lr, weight_decay = train.lr, train.weight_decay
        d_params = [*model.encoder.parameters(), *model.critic.parameters()]
        fused = True if runtime.device.type in ("cpu", "cuda") else None
        self.d_optimizer = torch.optim.Adam(d_params, lr=lr, betas=BETAS, weight_decay=weight_decay, fused=fused)
        self.g_optimizer = torch.optim.Adam(
            model.generator.parameters(), lr=lr, betas=BETAS, weight_decay=weight_decay, fused=fused
        )
        self.eval_rng: torch.Generator | None = None

    def optimizers(self) -> list[torch.optim.Optimizer]:
        return [self.d_optimizer, self.g_optimizer]

    def noise(self, n: int, generator: torch.Generator) -> Tensor:
        return torch.randn(n, self.model.latent_dim, generator=generator, device=self.runtime.device)

    def train_step(self, batch: Batch) -> dict[str, Tensor]:
        real, n = self.runtime.prepare(batch.x), len(batch)
        ones, zeros = torch.ones(n, device=real.device), torch.zeros(n, device=real.device)
        with self.runtime.autocast():
            fake = self.model(self.noise(n, batch.rng()))
            real_logits = self.model.discriminate(real).float()
            fake_logits = self.model.discriminate(fake.detach()).float()
        d_loss = F.binary_cross_entropy_with_logits(real_logits, ones) + F.binary_cross_entropy_with_logits(
            fake_logits, zeros
        )
        self.d_optimizer.zero_grad(set_to_none=True)
        d_loss.backward()  # type: ignore[no-untyped-call]
        self.d_optimizer.step()
        with self.runtime.autocast():
            fooled = self.model.discriminate(fake).float()
        g_loss = F.binary_cross_entropy_with_logits(fooled, ones)  # non-saturating: log D(G(z)) up
        self.g_optimizer.zero_grad(set_to_none=True)
        g_loss.backward()  # type: ignore[no-untyped-call]
        self.g_optimizer.step()
        return {
            "d_loss": d_loss.detach() * n,
            "g_loss": g_loss.detach() * n,
            "d_real": torch.sigmoid(real_logits.detach()).sum(),
            "d_fake": torch.sigmoid(fake_logits.detach()).sum(),
        }

    def eval_mode(self) -> None:
        super().eval_mode()
        self.eval_rng = torch.Generator(device=self.runtime.device).manual_seed(mix_seed(self.seed, "eval"))

    @torch.no_grad()
    def eval_step(self, x: Tensor, labels: Tensor) -> dict[str, Tensor]:
        assert self.eval_rng is not None
        n = x.shape[0]
        with self.runtime.autocast():
            real = self.model.discriminate(self.runtime.prepare(x)).float()
            fake = self.model.discriminate(self.model(self.noise(n, self.eval_rng))).float()
        loss = F.binary_cross_entropy_with_logits(real, torch.ones_like(real), reduction="sum")
        loss = loss + F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake), reduction="sum")
        return {"d_loss": loss, "d_real": torch.sigmoid(real).sum(), "d_fake": torch.sigmoid(fake).sum()}

    def improves(self, value: float, best: float | None) -> bool:
        return True  # the newest is the best a GAN can say

    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.d_optimizer.state_dict(),
            "g_optimizer": self.g_optimizer.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        if "optimizer" in state:  # a ``best`` checkpoint has weights alone
            self.d_optimizer.load_state_dict(state["optimizer"])
            self.g_optimizer.load_state_dict(state["g_optimizer"])

    def epoch_artifacts(self, work_dir: Path, epoch: int) -> list[tuple[str, Path]]:
        """The epoch's sample grid, generated from the same noise every epoch (a long run keeps about a
        hundred: every k-th epoch, and the last)."""
        if epoch % self.sample_every and epoch != self.epochs:
            return []
        fixed = torch.Generator(device=self.runtime.device).manual_seed(mix_seed(self.seed, "samples"))
        was_training = self.model.training
        self.model.eval()
        with torch.no_grad():
            images = self.model(self.noise(SAMPLES, fixed)).float().cpu()
        self.model.train(was_training)
        name = f"samples-epoch-{epoch}.png"
        path = work_dir / f".{name}"
        save_grid(images, path)
        return [(name, path)]


def save_grid(images: Tensor, path: Path, pad: int = 2) -> None:
    """Images in [-1, 1], (N, C, H, W), as one PNG: a square grid with ``pad`` black pixels between."""
    from PIL import Image

    n, c, h, w = images.shape
    side = math.ceil(math.sqrt(n))
    grid = torch.zeros(c, pad + side * (h + pad), pad + side * (w + pad), dtype=torch.uint8)
    pixels = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    for i in range(n):
        top, left = pad + (i // side) * (h + pad), pad + (i % side) * (w + pad)
        grid[:, top : top + h, left : left + w] = pixels[i]
    array = grid.squeeze(0).numpy() if c == 1 else grid.permute(1, 2, 0).numpy()
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format="PNG")


def dcgan_task(spec: AnyJobSpec, ctx: TrainingContext, splits: Splits) -> Task:
    assert isinstance(spec, PretrainSpec) and isinstance(spec.model, DcganModel)
    torch.manual_seed(spec.train.seed)
    model = GANS[spec.model.arch](spec.model, spec.dataset.input_shape())
    runtime = Runtime.of(spec.train, ctx.device, model)
    return GanTask(model, runtime, spec.train)
