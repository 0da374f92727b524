"""The article's training loop, written the article's way (seed-pretrain-finetune.md, section 4).

A torchvision-style dataset hands out PIL images that ``ToTensor`` + ``Normalize`` convert one
sample at a time inside the ``DataLoader(batch_size=100, shuffle=True, num_workers=2)`` workers;
the loop calls ``loss.item()`` every step. The models and optimizers are the article's: an MLP
autoencoder with Adam 1e-3 and MSE against its input, a torchvision ResNet-18 with a new 10-class
``fc`` and SGD 1e-3 momentum 0.9 with cross-entropy. The one change is the article's bug: its
autoencoder fed 4-D images to ``Linear`` layers, so ``forward`` flattens the input (and gives the
output the image's shape back, so the loss compares like with like).

The autoencoder's widths here are trainjobs' ``mlp_autoencoder`` with ``hidden [1024, 512]`` and
``bottleneck 256`` (3072-1024-512-256-512-1024-3072), the model both sides of the benchmark train.
``.to(device)`` is the only other addition, for a run on a GPU.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
import torchvision
import torchvision.transforms as transforms
from PIL import Image

Arch = Literal["autoencoder", "resnet18"]


class ImageArrayDataset(torchvision.datasets.VisionDataset):
    """Images held as an (N, H, W, C) uint8 array, served as PIL images: what ``torchvision.datasets.CIFAR10`` does."""

    def __init__(self, data: np.ndarray, targets: list[int], transform: Any = None) -> None:
        super().__init__(root="", transform=transform)
        self.data = data
        self.targets = targets

    def __getitem__(self, index: int) -> tuple[Any, int]:
        img, target = self.data[index], self.targets[index]
        img = Image.fromarray(img)
        if self.transform is not None:
            img = self.transform(img)
        return img, target

    def __len__(self) -> int:
        return len(self.data)


class Autoencoder(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = torch.nn.Sequential(
            torch.nn.Linear(3 * 32 * 32, 1024),
            torch.nn.BatchNorm1d(1024),
            torch.nn.ReLU(True),
            torch.nn.Linear(1024, 512),
            torch.nn.BatchNorm1d(512),
            torch.nn.ReLU(True),
            torch.nn.Linear(512, 256),
            torch.nn.Tanh(),
        )
        self.decoder = torch.nn.Sequential(
            torch.nn.Linear(256, 512),
            torch.nn.BatchNorm1d(512),
            torch.nn.ReLU(True),
            torch.nn.Linear(512, 1024),
            torch.nn.BatchNorm1d(1024),
            torch.nn.ReLU(True),
            torch.nn.Linear(1024, 3 * 32 * 32),
            torch.nn.Tanh(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x = x.view(x.size(0), -1)  # the article's bug, fixed: Linear layers take flat vectors
        x = self.encoder(x)
        x = self.decoder(x)
        return x.view(shape)


@dataclass
class ReferenceRun:
    train_seconds: float
    """Time in the epoch loops: DataLoader iteration (workers included) and the steps."""
    wall_seconds: float
    """Dataset and model set-up plus training."""
    samples: int
    """Images trained on, over every epoch."""
    final_loss: float
    """Mean training loss of the last epoch (the article's ``running_loss / len(trainloader)``)."""


def train_reference(
    arch: Arch, images: np.ndarray, labels: list[int], *, epochs: int, device: str = "cpu", seed: int = 0
) -> ReferenceRun:
    """Train ``arch`` on ``images`` (N, 32, 32, 3) uint8 the article's way."""
    started = time.perf_counter()
    torch.manual_seed(seed)

    # 数据预处理 (the article's transform, dataset and loader)
    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))])
    trainset = ImageArrayDataset(images, labels, transform=transform)
    trainloader = torch.utils.data.DataLoader(trainset, batch_size=100, shuffle=True, num_workers=2)

    model: torch.nn.Module
    if arch == "autoencoder":
        model = Autoencoder()
        criterion: torch.nn.Module = torch.nn.MSELoss()
        optimizer: torch.optim.Optimizer = torch.optim.Adam(model.parameters(), lr=0.001)
    else:
        model = torchvision.models.resnet18(weights=None)  # the article loads ImageNet weights; the same compute
        num_ftrs = model.fc.in_features
        model.fc = torch.nn.Linear(num_ftrs, 10)
        criterion = torch.nn.CrossEntropyLoss()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.001, momentum=0.9)
    model = model.to(device)

    train_started = time.perf_counter()
    running_loss = 0.0
    for _epoch in range(epochs):  # loop over the dataset multiple times
        running_loss = 0.0
        for _i, data in enumerate(trainloader, 0):
            inputs, targets = data
            inputs, targets = inputs.to(device), targets.to(device)
            optimizer.zero_grad()
            outputs = model(inputs)
            loss = criterion(outputs, inputs if arch == "autoencoder" else targets)
            loss.backward()
            optimizer.step()
            running_loss += loss.item()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    ended = time.perf_counter()
    return ReferenceRun(
        train_seconds=ended - train_started,
        wall_seconds=ended - started,
        samples=epochs * len(trainset),
        final_loss=running_loss / len(trainloader),
    )
