"""Cost of TTA evaluation relative to 62 plain evaluations of the same images (docs/protocol.md §5).

The paper's TTA runs 60 forward passes per image (the identity and 59 views) where 62
plain evaluations would run 62, so with free view transforms the ratio is 60/62 = 0.97;
the target is <= 1.10.  The script also times the 59 view transforms alone on one batch
to show they are cheap next to the forward passes.

    python benchmarks/evaluate.py                       # CPU: 16 images at 224, resnet34v2
    python benchmarks/evaluate.py --device cuda         # GPU: 3,589 images (PrivateTest size)
    python benchmarks/evaluate.py --arch lhc_net --images 64 --size 112

Images are made the reference way (48x48 originals resized on the fly), as ``fertool
evaluate --csv`` does.  Random weights: the timing does not depend on them.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from fertool.data.datasets import ReferenceSplit
from fertool.evaluation.inference import predict_probs
from fertool.evaluation.tta import apply_view, tta_plan
from fertool.models import build_model
from fertool.recipe import load_recipe
from fertool.utils import precision


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


CLOCK = time.perf_counter


def timed(fn, device: torch.device, repeat: int = 1) -> float:
    """Best time of ``repeat`` calls (wall clock, or process CPU time with --cpu-time)."""
    best = float("inf")
    for _ in range(repeat):
        sync(device)
        start = CLOCK()
        fn()
        sync(device)
        best = min(best, CLOCK() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--arch", default="resnet34v2", choices=["resnet34v2", "lhc_net", "lhc_netc"])
    parser.add_argument("--images", type=int, default=None, help="default: 16 on CPU, 3589 on CUDA")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=None, help="default: 16 on CPU, 256 on CUDA")
    parser.add_argument("--preset", default="paper")
    parser.add_argument(
        "--precision",
        default="fp32",
        choices=("fp32", "tf32", "bf16"),
        help="forward passes: fp32 (the paper's, default), tf32 or bf16 (CUDA)",
    )
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's)")
    parser.add_argument(
        "--cpu-time",
        action="store_true",
        help="CPU: measure process CPU time instead of wall time (for a machine shared with other "
        "jobs; use with --threads 1)",
    )
    parser.add_argument("--repeat", type=int, default=None, help="plain passes timed (best of); default 3 CPU, 5 CUDA")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.cpu_time:
        global CLOCK
        CLOCK = time.process_time

    device = torch.device(
        "cuda"
        if args.device == "auto" and torch.cuda.is_available()
        else ("cpu" if args.device == "auto" else args.device)
    )
    cuda = device.type == "cuda"
    n = args.images or (3589 if cuda else 16)
    bs = args.batch_size or (256 if cuda else 16)
    repeat = args.repeat or (5 if cuda else 3)
    if cuda:
        torch.backends.cudnn.benchmark = True
    preset = load_recipe(None, ()).tta.presets[args.preset]
    views = tta_plan(preset, args.size)

    rng = np.random.default_rng(0)
    split = ReferenceSplit(
        images=rng.integers(0, 256, size=(n, 48, 48), dtype=np.uint8),
        labels=torch.from_numpy(rng.integers(0, 7, size=n).astype(np.int64)),
        size=args.size,
        name="PrivateTest",
    )
    model = build_model(args.arch, input_size=args.size).to(device).eval()
    kw = dict(batch_size=bs, device=device, precision=args.precision, channels_last=cuda)

    # warm-up (cuDNN autotuning, view caches)
    warm = ReferenceSplit(images=split.images[:bs], labels=split.labels[:bs], size=args.size)
    predict_probs(model, warm, tta=preset, **kw)

    plain = timed(lambda: predict_probs(model, split, **kw), device, repeat)
    with_tta = timed(lambda: predict_probs(model, split, tta=preset, **kw), device, 1)

    x = split.load(torch.arange(min(bs, n)), device)  # one batch, as predict_probs sees it
    transforms = timed(lambda: [apply_view(x, v) for v in views], device, 3)

    def forwards():
        with torch.inference_mode(), precision(device, args.precision):
            xx = x.contiguous(memory_format=torch.channels_last) if cuda else x
            for _ in views:
                model(xx)

    forward_time = timed(forwards, device, 1 if not cuda else 3)

    passes = 1 + len(views)
    divisor = preset.identity_weight + len(views)
    print(
        f"device {device} ({torch.cuda.get_device_name(device) if cuda else f'{torch.get_num_threads()} threads'}), "
        f"arch {args.arch}, {n} images at {args.size}px, batch {bs}, precision {args.precision}, "
        f"preset {args.preset}: {len(views)} views, {passes} forward passes per image"
        + (", times are process CPU seconds" if args.cpu_time else "")
    )
    print(f"plain evaluation        : {plain:8.2f} s  {n / plain:9.1f} img/s")
    print(
        f"TTA evaluation          : {with_tta:8.2f} s  {n / with_tta:9.1f} img/s "
        f"({n * passes / with_tta:,.0f} forwards/s)"
    )
    print(f"62 plain evaluations    : {int(divisor) * plain:8.2f} s  (estimated from the plain time)")
    print(
        f"TTA / ({int(divisor)} x plain)     : {with_tta / (divisor * plain):8.3f}   (target <= 1.10; "
        f"{passes}/{int(divisor)} = {passes / divisor:.3f} with free views)"
    )
    print(
        f"{len(views)} view transforms, one batch of {len(x)}: {1000 * transforms:8.1f} ms = "
        f"{100 * transforms / forward_time:.1f}% of the {len(views)} forward passes of that batch "
        f"({1000 * forward_time:.0f} ms)"
    )
    if cuda and n >= 3589:
        print(f"whole PrivateTest with TTA: {with_tta:.1f} s (target < 30 s on one H100)")


if __name__ == "__main__":
    main()
