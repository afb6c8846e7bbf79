"""Training throughput: the input pipeline alone vs a full training step.

    python benchmarks/train.py [--device cpu|cuda|auto] [--images 512] [--steps 3]

(a) input pipeline of stage 2 at 224: memory-mapped uint8 cache -> batch of 64 ->
    float (B, 3, 224, 224) on the device (grey expanded) -> KerasAugment(rotation 10,
    shift 0.1, zoom 0.1, flip), broken down into load / augment; plus the one-off JPEG
    decode that builds the cache.
(b) one SGD step (forward, cross-entropy, backward, update) of ResNet34v2 and of LHC-Net
    at 224: batch 8 in float32 on the CPU; batch 128 with bf16 autocast and
    channels_last on CUDA.

Target: (a) >= 5x (b) on the CPU; LHC-Net >= 3,000 images/s on one H100.
Prints numbers only; nothing here is a test.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from fertool import CLASS_NAMES  # noqa: E402
from fertool.data.augment import KerasAugment  # noqa: E402
from fertool.data.cache import open_image_split  # noqa: E402
from fertool.data.datasets import batch_indices  # noqa: E402
from fertool.recipe import AugmentConfig  # noqa: E402

SIZE = 224
STAGE2 = AugmentConfig(rotation=10, shift=0.1, zoom=0.1, flip=True)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_prepared(root: Path, n: int) -> None:
    """``n`` synthetic grey 224x224 JPEGs (quality 100, 4:4:4) laid out like ``fertool prepare``."""
    import cv2

    from fertool.data.prepare import prepare_pixels

    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, (n, 48, 48), dtype=np.uint8)
    big = prepare_pixels(small, size=SIZE, rgb=False)  # (n, 224, 224) uint8, as prepare makes them
    params = [cv2.IMWRITE_JPEG_QUALITY, 100, cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444]
    rows = []
    for i in range(n):
        label = i % 7
        rel = f"Training/{CLASS_NAMES[label]}/{i}.jpg"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        img = big[i] if big.ndim == 4 else np.repeat(big[i][..., None], 3, axis=2)
        cv2.imwrite(str(root / rel), img, params)
        rows.append({"row": i, "split": "Training", "label": label, "class": CLASS_NAMES[label], "path": rel})
    with open(root / "manifest.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (root / "prepare.json").write_text(json.dumps({"size": SIZE, "synthetic": True}))


def bench_pipeline(split, device: torch.device, *, batch_size: int = 64, epochs: int = 2) -> dict:
    """(a) images/s of load + augment, and of each part, over ``epochs`` passes."""
    aug = KerasAugment(STAGE2)
    gen = torch.Generator().manual_seed(0)
    n = len(split)
    t_load = t_aug = 0.0
    images = 0
    # warm-up batch (allocations, CUDA context, kernels)
    aug(split.load(torch.arange(batch_size), device), gen)
    _sync(device)
    for _ in range(epochs):
        for idx in batch_indices(n, batch_size, shuffle=True, generator=gen, drop_last=True):
            t0 = time.perf_counter()
            x = split.load(idx, device)  # (B, 3, 224, 224) float32, grey expanded
            _sync(device)
            t1 = time.perf_counter()
            x = aug(x, gen)
            _sync(device)
            t2 = time.perf_counter()
            t_load += t1 - t0
            t_aug += t2 - t1
            images += len(idx)
    return {
        "pipeline": images / (t_load + t_aug),
        "load": images / t_load,
        "augment": images / t_aug,
    }


def bench_training_step(
    arch: str, device: torch.device, *, batch_size: int, steps: int, amp: bool, channels_last: bool
) -> float:
    """(b) images/s of one SGD step (forward, cross-entropy, backward, update) at 224."""
    from fertool.models import build_model

    model = build_model(arch).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    gen = torch.Generator().manual_seed(0)
    x = (torch.rand(batch_size, 3, SIZE, SIZE, generator=gen) * 255).to(device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 7, (batch_size,), generator=gen).to(device)

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()  # warm-up
    if device.type == "cuda":
        step()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    return batch_size * steps / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto", help="cpu, cuda or auto (both when CUDA is available)")
    ap.add_argument("--images", type=int, default=512, help="synthetic training images in the cache")
    ap.add_argument("--steps", type=int, default=3, help="timed training steps per model")
    ap.add_argument("--no-models", action="store_true", help="only (a), the input pipeline")
    args = ap.parse_args()

    if args.device == "auto":
        devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    else:
        devices = [torch.device(args.device)]
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, "
        f"CUDA: {torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none'}"
    )

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_prepared(root, args.images)
        t0 = time.perf_counter()
        split = open_image_split(root, "Training")
        build = time.perf_counter() - t0
        t0 = time.perf_counter()
        split = open_image_split(root, "Training")
        reopen = time.perf_counter() - t0
        print(
            f"cache build (JPEG decode, {args.images} images): {args.images / build:8.0f} img/s; "
            f"reopen {reopen * 1e3:.1f} ms; stored {split.images.shape} {split.images.dtype}"
        )

        results = {}
        for device in devices:
            r = bench_pipeline(split, device)
            results[device.type] = {"pipeline": r["pipeline"]}
            print(
                f"[{device.type}] (a) input pipeline, stage 2 augmentation, batch 64, 224: "
                f"{r['pipeline']:8.0f} img/s  (load {r['load']:.0f} img/s, augment {r['augment']:.0f} img/s)"
            )
        del split

    if args.no_models:
        return
    try:
        import fertool.models  # noqa: F401
    except ImportError:
        print("(b) skipped: fertool.models is not available")
        return
    for device in devices:
        cuda = device.type == "cuda"
        batch = 128 if cuda else 8
        for arch in ("resnet34v2", "lhc_net"):
            ips = bench_training_step(
                arch, device, batch_size=batch, steps=args.steps if not cuda else 20, amp=cuda, channels_last=cuda
            )
            results[device.type][arch] = ips
            mode = "bf16 + channels_last" if cuda else "float32"
            print(
                f"[{device.type}] (b) training step {arch:10s} batch {batch}, {mode}: {ips:8.1f} img/s  "
                f"(pipeline / step = {results[device.type]['pipeline'] / ips:.0f}x)"
            )


if __name__ == "__main__":
    main()
