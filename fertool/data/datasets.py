"""Splits of images that produce model-ready batches on a device.

Every split answers ``len(split)``, ``split.labels`` (int64, CPU) and
``split.load(index, device)`` -> float32 (B, 3, S, S) with raw pixel values 0..255, the
network's input contract (docs/protocol.md §1: no division, ``bn_data`` normalises).  Batches are
assembled from indices so that data order is one explicit generator
(:func:`batch_indices`) and augmentation runs on the training device afterwards.

* :class:`ArraySplit` holds final-size uint8 images (an in-memory array or the
  memory-mapped decode cache of the prepared JPEGs); grey images are stored once and
  replicated to three channels on the device.
* :class:`ReferenceSplit` holds the 48x48 originals and resizes on the fly with the
  TF-exact float bilinear resize, no floor and no JPEG: how the reference protocol makes
  validation and test images.
"""

from __future__ import annotations

import abc
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from .. import CLASS_NAMES
from ..errors import DataError
from .resize import resize_bilinear


class ImageSplit(abc.ABC):
    """Base class: a named, labelled, indexable set of images of one size."""

    name: str
    size: int
    labels: torch.Tensor  # (N,) int64, CPU
    class_names: tuple[str, ...]

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @abc.abstractmethod
    def load(self, index: torch.Tensor, device: torch.device | str = "cpu") -> torch.Tensor:
        """Images ``index`` as float32 (B, 3, S, S), values 0..255, on ``device``."""

    def class_counts(self) -> list[int]:
        return torch.bincount(self.labels, minlength=len(self.class_names)).tolist()


def _to_nchw3(batch: torch.Tensor) -> torch.Tensor:
    """uint8/float (B, S, S) or (B, S, S, C) -> float32 (B, 3, S, S)."""
    batch = batch.to(torch.float32)
    if batch.ndim == 3:  # grey: (B, S, S) -> (B, 3, S, S), channels share memory
        return batch[:, None].expand(-1, 3, -1, -1)
    if batch.shape[-1] == 1:
        return batch.permute(0, 3, 1, 2).expand(-1, 3, -1, -1)
    return batch.permute(0, 3, 1, 2)  # (B, S, S, 3) -> (B, 3, S, S)


@dataclass
class ArraySplit(ImageSplit):
    """Final-size uint8 images (N, S, S) grey or (N, S, S, 3), e.g. a np.memmap cache."""

    images: np.ndarray
    labels: torch.Tensor
    name: str = "split"
    class_names: tuple[str, ...] = CLASS_NAMES
    rows: np.ndarray | None = None  # source CSV rows, for traceability
    targets: torch.Tensor | None = None  # (N, C) float32 soft targets (FER+ crossentropy mode), else None

    def __post_init__(self) -> None:
        if self.images.ndim not in (3, 4) or self.images.shape[1] != self.images.shape[2]:
            raise DataError(f"{self.name}: expected square images (N, S, S[, C]), got shape {self.images.shape}")
        if len(self.images) != len(self.labels):
            raise DataError(f"{self.name}: {len(self.images)} images but {len(self.labels)} labels")
        if self.targets is not None and tuple(self.targets.shape) != (len(self.labels), len(self.class_names)):
            raise DataError(
                f"{self.name}: soft targets of shape {tuple(self.targets.shape)}, expected "
                f"({len(self.labels)}, {len(self.class_names)})"
            )
        self.size = int(self.images.shape[1])

    def load(self, index: torch.Tensor, device: torch.device | str = "cpu") -> torch.Tensor:
        idx = np.sort(index.cpu().numpy())  # sorted reads are sequential in a memmap
        order = np.argsort(np.argsort(index.cpu().numpy(), kind="stable"), kind="stable")
        batch = torch.from_numpy(np.ascontiguousarray(self.images[idx]))[torch.from_numpy(order)]
        return _to_nchw3(batch.to(device, non_blocking=True))


@dataclass
class ReferenceSplit(ImageSplit):
    """48x48 uint8 originals, resized to ``size`` on the fly (float, no floor, no JPEG)."""

    images: np.ndarray  # (N, 48, 48) uint8
    labels: torch.Tensor
    size: int = 224
    name: str = "split"
    class_names: tuple[str, ...] = CLASS_NAMES
    rows: np.ndarray | None = None
    _cache: dict = field(default_factory=dict, repr=False)

    def load(self, index: torch.Tensor, device: torch.device | str = "cpu") -> torch.Tensor:
        batch = torch.from_numpy(self.images[index.cpu().numpy()]).to(device)  # (B, 48, 48) uint8
        resized = resize_bilinear(batch, self.size)  # (B, S, S) float32, exact TF arithmetic
        return resized[:, None].expand(-1, 3, -1, -1)  # (B, 3, S, S)


def reference_split(csv_path: str | os.PathLike, split: str, size: int) -> ReferenceSplit:
    """Validation/test images made the reference way straight from a FER2013 CSV."""
    from .csv import load_split

    arrays = load_split(csv_path, split)
    return ReferenceSplit(
        images=arrays.images,
        labels=torch.from_numpy(np.asarray(arrays.labels, dtype=np.int64)),
        size=size,
        name=split,
        rows=np.asarray(arrays.rows),
    )


def batch_indices(
    n: int,
    batch_size: int,
    *,
    shuffle: bool = False,
    generator: torch.Generator | None = None,
    rank: int = 0,
    world_size: int = 1,
    drop_last: bool = False,
) -> Iterator[torch.Tensor]:
    """Index batches of one epoch; under DDP each rank takes every ``world_size``-th index.

    With ``world_size > 1`` the order is padded (by wrapping) to a multiple of
    ``world_size`` so that every rank runs the same number of steps, as
    ``DistributedSampler`` does.
    """
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    if world_size > 1:
        total = -(-n // world_size) * world_size
        if total > n:
            order = torch.cat([order, order[: total - n]])
        order = order[rank::world_size]
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        if drop_last and len(chunk) < batch_size:
            break
        yield chunk


def iter_split(
    split: ImageSplit,
    batch_size: int,
    device: torch.device | str = "cpu",
    **kwargs,
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Yield ``(images (B,3,S,S) float on device, labels (B,) on device, indices (B,))``."""
    for idx in batch_indices(len(split), batch_size, **kwargs):
        yield split.load(idx, device), split.labels[idx].to(device), idx


__all__: Sequence[str] = (
    "ImageSplit",
    "ArraySplit",
    "ReferenceSplit",
    "reference_split",
    "batch_indices",
    "iter_split",
)
