"""The GPU acceptance checks in one script; on a machine without CUDA it says so and exits 0.

    python benchmarks/gpu_check.py [--steps 20] [--batch 128] [--images 3589]

With a CUDA device it prints:

1. training speed of LHC-Net at 224 px, one short run per precision (fp32, tf32, bf16;
   channels_last), in images per second (target: >= 3,000 img/s on one H100);
2. bf16 and tf32 against float32: the outputs of ResNet34v2 and LHC-Net on the same images
   (reference weights when the fixtures are found), as ``benchmarks/precision.py`` prints them;
3. the time of a PrivateTest-sized evaluation (3,589 images) with the paper's TTA, in float32
   (target: < 30 s on one H100);
4. one DistributedDataParallel training step over NCCL in a one-process group.

Prints numbers only; nothing here is a test.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from fertool.data.datasets import ArraySplit  # noqa: E402
from fertool.evaluation.inference import predict_probs  # noqa: E402
from fertool.models import build_model  # noqa: E402
from fertool.recipe import PRECISIONS, load_recipe  # noqa: E402
from fertool.utils import precision  # noqa: E402


def training_speed(device: torch.device, mode: str, *, batch: int, steps: int) -> float:
    """Images per second of SGD steps of LHC-Net at 224 px in ``mode`` (channels_last)."""
    torch.manual_seed(0)
    model = build_model("lhc_net").to(device).to(memory_format=torch.channels_last).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x = (torch.rand(batch, 3, 224, 224, device=device) * 255).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 7, (batch,), device=device)

    def step() -> None:
        with precision(device, mode, autocast=False):
            with precision(device, mode):
                logits = model(x)
            loss = F.cross_entropy(logits.float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    for _ in range(3):  # warm-up: cuDNN autotuning, allocator
        step()
    torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize(device)
    return batch * steps / (time.perf_counter() - start)


def tta_time(device: torch.device, images: int) -> float:
    """Seconds of a float32 LHC-Net evaluation of ``images`` 224-px images with the paper's TTA."""
    rng = np.random.default_rng(0)
    split = ArraySplit(
        images=rng.integers(0, 256, size=(images, 224, 224), dtype=np.uint8),
        labels=torch.from_numpy(rng.integers(0, 7, size=images).astype(np.int64)),
    )
    model = build_model("lhc_net").eval()
    preset = load_recipe(None).tta.presets["paper"]
    warm = ArraySplit(images=split.images[:64], labels=split.labels[:64])
    predict_probs(model, warm, batch_size=64, device=device, channels_last=True, tta=preset)
    torch.cuda.synchronize(device)
    start = time.perf_counter()
    predict_probs(model, split, batch_size=256, device=device, channels_last=True, tta=preset)
    torch.cuda.synchronize(device)
    return time.perf_counter() - start


def ddp_step(device: torch.device) -> str:
    """One training step of ResNet34v2 under DDP over NCCL, one process."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29531")
    dist.init_process_group("nccl", rank=0, world_size=1)
    try:
        net = DistributedDataParallel(build_model("resnet34v2").to(device), device_ids=[device.index or 0])
        opt = torch.optim.SGD(net.parameters(), lr=0.01)
        loss = F.cross_entropy(
            net(torch.rand(8, 3, 224, 224, device=device) * 255), torch.randint(0, 7, (8,), device=device)
        )
        loss.backward()
        opt.step()
        torch.cuda.synchronize(device)
        return f"ok (loss {float(loss):.4f})"
    finally:
        dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--images", type=int, default=3589)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device here: the GPU acceptance checks need one; nothing was measured")
        return
    device = torch.device("cuda", torch.cuda.current_device())
    print(f"device {torch.cuda.get_device_name(device)}, torch {torch.__version__}")
    for mode in PRECISIONS:
        rate = training_speed(device, mode, batch=args.batch, steps=args.steps)
        print(f"1. LHC-Net training, {mode:4}: {rate:8.0f} img/s (batch {args.batch}; target >= 3,000 on one H100)")
    from precision import output_differences, reference_networks  # benchmarks/precision.py

    nets, x, source = reference_networks(args.batch)
    print(f"2. outputs against float32 ({source}):")
    for mode in ("tf32", "bf16"):
        for name, net in nets.items():
            e = output_differences(net, x, device, mode)
            print(f"   {mode} {name:<11} logits rel. L2 {e['logit_rel_l2']:.2e}   max |dp| {e['max_abs_dp']:.2e}")
    seconds = tta_time(device, args.images)
    print(
        f"3. LHC-Net evaluation with the paper's TTA, float32: {args.images} images in {seconds:.1f} s "
        "(target < 30 s on one H100)"
    )
    print(f"4. DDP step over NCCL, one process: {ddp_step(device)}")


if __name__ == "__main__":
    main()
