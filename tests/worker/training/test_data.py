"""Datasets from files in their real formats, written by the tests; options; device batches."""

from __future__ import annotations

import hashlib
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import datasets

from app.core.specs import DigitsDataset, ImageFolderDataset, SyntheticDataset, TorchvisionDataset
from worker.training import DatasetError
from worker.training.data import epoch_batches, flip_crop, load_dataset, normalize, steps_per_epoch

CIFAR_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def write_cifar10(root: Path, per_batch: int, monkeypatch: pytest.MonkeyPatch) -> np.ndarray:
    """cifar-10-batches-py/ as the python version ships it; returns all images (N, 3, 32, 32).

    torchvision checks each file's md5 against the real dataset's, so the test points those
    checksums at the files it wrote: the reading code that runs is torchvision's own.
    """
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    images = []
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (per_batch, 3 * 32 * 32), dtype=np.uint8)
        labels = [i % 10 for i in range(per_batch)]
        entry = {"batch_label": name, "labels": labels, "data": data, "filenames": [f"{i}.png" for i in labels]}
        (folder / name).write_bytes(pickle.dumps(entry, protocol=2))
        images.append(data.reshape(-1, 3, 32, 32))
    meta = {"label_names": CIFAR_NAMES, "num_cases_per_batch": per_batch, "num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    train_list = [[f"data_batch_{i}", md5(folder / f"data_batch_{i}")] for i in range(1, 6)]
    monkeypatch.setattr(datasets.CIFAR10, "train_list", train_list)
    monkeypatch.setattr(datasets.CIFAR10, "test_list", [["test_batch", md5(folder / "test_batch")]])
    meta_entry = {"filename": "batches.meta", "key": "label_names", "md5": md5(folder / "batches.meta")}
    monkeypatch.setattr(datasets.CIFAR10, "meta", meta_entry)
    return np.concatenate(images)


def write_idx(path: Path, array: np.ndarray) -> None:
    """An IDX (MNIST) file: magic (0, 0, type 0x08 = ubyte, ndim), big-endian sizes, the bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def write_mnist(root: Path, folder: str, n_train: int, n_test: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    raw = root / folder / "raw"
    train = rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8)
    test = rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8)
    write_idx(raw / "train-images-idx3-ubyte", train)
    write_idx(raw / "train-labels-idx1-ubyte", np.arange(n_train) % 10)
    write_idx(raw / "t10k-images-idx3-ubyte", test)
    write_idx(raw / "t10k-labels-idx1-ubyte", np.arange(n_test) % 10)
    return train, test


def test_digits_split_is_fixed_and_scaled() -> None:
    splits = load_dataset(DigitsDataset(name="digits"), Path("unused"), seed=3)
    assert splits.train.x.shape == (1437, 1, 8, 8) and splits.test.x.shape == (360, 1, 8, 8)
    assert splits.train.x.dtype == torch.uint8 and splits.train.y.dtype == torch.int64
    assert int(splits.train.x.max()) == 255 and int(splits.train.x.min()) == 0
    assert torch.bincount(splits.test.y).tolist() == [36, 36, 35, 37, 36, 37, 36, 36, 35, 36]
    again = load_dataset(DigitsDataset(name="digits"), Path("unused"), seed=7)
    assert torch.equal(splits.test.x, again.test.x)  # the split does not depend on the training seed


def test_label_budget_limit_and_validation_options() -> None:
    five = load_dataset(DigitsDataset(name="digits", labels_per_class=5), Path("unused"), seed=0)
    assert torch.bincount(five.train.y).tolist() == [5] * 10
    other = load_dataset(DigitsDataset(name="digits", labels_per_class=5), Path("unused"), seed=1)
    assert not torch.equal(five.train.x, other.train.x)  # seeded by the training seed

    tenth = load_dataset(DigitsDataset(name="digits", label_fraction=0.1), Path("unused"), seed=0)
    assert 130 <= len(tenth.train) <= 150 and set(tenth.train.y.tolist()) == set(range(10))

    limited = load_dataset(DigitsDataset(name="digits", limit=100, val_fraction=0.2), Path("unused"), seed=0)
    assert limited.val is not None
    assert len(limited.train) + len(limited.val) == 100 and 15 <= len(limited.val) <= 25
    full = load_dataset(DigitsDataset(name="digits"), Path("unused"), seed=0)
    first_100 = {bytes(x.numpy()) for x in full.train.x[:100]}
    assert {bytes(x.numpy()) for x in torch.cat([limited.train.x, limited.val.x])} == first_100


def test_cifar10_pickle_batches_load_and_are_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    images = write_cifar10(tmp_path / "cifar10", per_batch=6, monkeypatch=monkeypatch)
    splits = load_dataset(TorchvisionDataset(name="cifar10"), tmp_path, seed=0)
    assert splits.train.x.shape == (30, 3, 32, 32) and splits.test.x.shape == (6, 3, 32, 32)
    assert np.array_equal(splits.train.x.numpy(), images[:30])  # channel planes in the right order
    assert np.array_equal(splits.test.x.numpy(), images[30:])
    assert splits.train.y.tolist()[:6] == [0, 1, 2, 3, 4, 5] and splits.num_classes == 10

    cache = tmp_path / ".cache" / "cifar10-v1.pt"
    assert cache.is_file()
    for f in (tmp_path / "cifar10" / "cifar-10-batches-py").iterdir():
        f.unlink()  # from now on only the cache can answer
    cached = load_dataset(TorchvisionDataset(name="cifar10"), tmp_path, seed=0)
    assert torch.equal(cached.train.x, splits.train.x) and torch.equal(cached.test.y, splits.test.y)


@pytest.mark.parametrize(("name", "folder"), [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST")])
def test_mnist_idx_files_load(tmp_path: Path, name: str, folder: str) -> None:
    train, test = write_mnist(tmp_path / name, folder, n_train=20, n_test=10)
    splits = load_dataset(TorchvisionDataset(name=name), tmp_path, seed=0)  # type: ignore[arg-type]
    assert splits.train.x.shape == (20, 1, 28, 28) and splits.test.x.shape == (10, 1, 28, 28)
    assert np.array_equal(splits.train.x[:, 0].numpy(), train) and np.array_equal(splits.test.x[:, 0].numpy(), test)
    assert splits.test.y.tolist() == list(range(10))


@pytest.mark.parametrize(("name", "expected"), [("cifar10", "cifar-10-batches-py"), ("mnist", "MNIST/raw")])
def test_missing_dataset_names_path_and_fix(tmp_path: Path, name: str, expected: str) -> None:
    with pytest.raises(DatasetError) as raised:
        load_dataset(TorchvisionDataset(name=name), tmp_path / "data", seed=0)  # type: ignore[arg-type]
    message = str(raised.value)
    assert str(tmp_path / "data" / name) in message and expected in message and "download=true" in message
    assert "\n" not in message


def write_png(path: Path, color: tuple[int, int, int], size: int = 12) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), color).save(path)


def test_imagefolder_pngs_are_resized_and_split(tmp_path: Path) -> None:
    colors = {"blue": (0, 0, 255), "red": (255, 0, 0)}
    for name, color in colors.items():
        for i in range(10):
            write_png(tmp_path / "shapes" / name / f"{i}.png", color)
    splits = load_dataset(ImageFolderDataset(name="imagefolder", path="shapes", image_size=8), tmp_path, seed=0)
    assert splits.num_classes == 2
    assert splits.train.x.shape == (16, 3, 8, 8) and splits.test.x.shape == (4, 3, 8, 8)
    assert torch.bincount(splits.test.y).tolist() == [2, 2]
    for x, y in zip(splits.train.x, splits.train.y, strict=True):
        assert tuple(x[:, 0, 0].tolist()) == colors[["blue", "red"][int(y)]]


def test_imagefolder_uses_train_and_test_folders(tmp_path: Path) -> None:
    for split, n in (("train", 3), ("test", 2)):
        for name in ("a", "b", "c"):
            for i in range(n):
                write_png(tmp_path / "set" / split / name / f"{i}.png", (i, 0, 0))
    splits = load_dataset(ImageFolderDataset(name="imagefolder", path="set", image_size=16), tmp_path, seed=0)
    assert len(splits.train) == 9 and len(splits.test) == 6 and splits.num_classes == 3


def test_imagefolder_symlink_out_of_data_dir_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    for i in range(4):
        write_png(outside / "cls" / f"{i}.png", (1, 2, 3))
    data = tmp_path / "data"
    data.mkdir()
    (data / "escape").symlink_to(outside, target_is_directory=True)
    with pytest.raises(DatasetError, match="outside DATA_DIR"):
        load_dataset(ImageFolderDataset(name="imagefolder", path="escape"), data, seed=0)
    with pytest.raises(DatasetError, match=str(data / "absent")):
        load_dataset(ImageFolderDataset(name="imagefolder", path="absent"), data, seed=0)


def test_synthetic_is_seeded_and_class_structured() -> None:
    spec = SyntheticDataset(name="synthetic", num_samples=200, image_shape=[1, 8, 8], num_classes=2)
    a, b = load_dataset(spec, Path("unused"), seed=0), load_dataset(spec, Path("unused"), seed=5)
    assert torch.equal(a.train.x, b.train.x) and a.train.x.shape == (160, 1, 8, 8) and len(a.test) == 40
    means = [a.train.x[a.train.y == c].float().mean(0) for c in (0, 1)]
    assert (means[0] - means[1]).abs().mean() > 10  # the class shows in the pixels


def test_epoch_batches_resume_mid_epoch_with_the_same_batches() -> None:
    spec = SyntheticDataset(name="synthetic", num_samples=53, image_shape=[1, 4, 4], num_classes=3)
    train = load_dataset(spec, Path("unused"), seed=0).train  # 43 images
    assert steps_per_epoch(43, 10) == 5 and steps_per_epoch(41, 10) == 4 and steps_per_epoch(1, 10) == 1
    full = list(epoch_batches(train, 10, seed=1, epoch=2))
    tail = list(epoch_batches(train, 10, seed=1, epoch=2, start=3))
    assert [len(y) for _, y in full] == [10, 10, 10, 10, 3]
    assert all(torch.equal(a[0], b[0]) for a, b in zip(full[3:], tail, strict=True))
    assert not torch.equal(full[0][1], next(epoch_batches(train, 10, seed=1, epoch=3))[1])
    assert sorted(torch.cat([y for _, y in full]).tolist()) == sorted(train.y.tolist())


def test_flip_crop_is_seeded_and_keeps_shape() -> None:
    x = normalize(torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8))
    assert float(x.min()) >= -1 and float(x.max()) <= 1

    def draw(seed: int) -> torch.Tensor:
        return flip_crop(x, torch.Generator().manual_seed(seed))

    assert draw(0).shape == x.shape and torch.equal(draw(0), draw(0)) and not torch.equal(draw(0), draw(1))
    # A translation keeps the image's middle, shifted by at most 4 pixels (possibly mirrored).
    out = draw(2)
    for i in range(8):
        candidates = [x[i], x[i].flip(2)]
        assert any(
            torch.equal(out[i, :, 8:24, 8:24], c[:, 8 + dy : 24 + dy, 8 + dx : 24 + dx])
            for c in candidates
            for dy in range(-4, 5)
            for dx in range(-4, 5)
        )
