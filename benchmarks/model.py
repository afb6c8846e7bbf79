"""Speed of the models: forward+backward per image, LHC-Net / ResNet34v2 and / torchvision ResNet34 ratios, batched LHC vs loop.

    python benchmarks/model.py [--device cpu|cuda] [--batch N] [--steps N] [--size 224]
    python benchmarks/model.py --compile [--size 64 --batch 8]     (train.compile against eager)

CPU: float32, batch 8.  CUDA: batch 128, bf16 autocast, channels_last.  Prints numbers only.
``--cpu-time`` (CPU only) runs torch on one thread and times with the thread's CPU time, which
other processes on a shared machine disturb much less than wall-clock time.  ``--profile``
then shows where each LHC module's forward+backward time goes (``torch.profiler``, self time
by kind of operation) and each module's time against a 3x3 convolution of its shape.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from fertool.layers import LHC
from fertool.models import build_model

CLOCK = time.perf_counter


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def step_times(model, x, y, device, amp: bool, steps: int) -> list[float]:
    """Seconds of ``steps`` forward+backward passes (optimiser step excluded)."""
    model.train()
    times = []
    for _ in range(steps):
        _sync(device)
        t0 = CLOCK()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        model.zero_grad(set_to_none=True)
        _sync(device)
        times.append(CLOCK() - t0)
    return times


class LoopLHC(torch.nn.Module):
    """The same module computed head by head (the reference's Python loop), for comparison."""

    def __init__(self, m: LHC):
        super().__init__()
        self.m = m

    def forward(self, x):
        m = self.m
        b, c, h, w = x.shape
        r = h * w // m.heads
        q_src = F.avg_pool2d(x, m.pool, 1, m.pool // 2, count_include_pad=False).reshape(b, c, h * w)
        k_src = F.max_pool2d(x, m.pool, 1, m.pool // 2).reshape(b, c, h * w)
        v = F.avg_pool2d(m.v(x), 3, 1, 1, count_include_pad=False).reshape(b, c, h * w)
        outs = []
        for i in range(m.heads):
            sl = slice(i * r, (i + 1) * r)
            q = q_src[:, :, sl] @ m.qk_weight[i] + m.qk_bias[i]
            k = k_src[:, :, sl] @ m.qk_weight[i] + m.qk_bias[i]
            s = q @ k.transpose(1, 2)
            t = torch.sigmoid(m.p(s.mean(-1)))
            wts = torch.softmax(s / torch.pow(torch.tensor(float(m.dim), device=x.device), m.scale + t)[..., None], -1)
            outs.append(wts @ v[:, :, sl])
        return x + torch.cat(outs, dim=2).reshape(b, c, h, w)


def best_seconds(fn, device, repeats: int, warmup: int = 1) -> float:
    """Minimum seconds of ``repeats`` calls of ``fn`` after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    best = float("inf")
    for _ in range(repeats):
        _sync(device)
        t0 = CLOCK()
        fn()
        _sync(device)
        best = min(best, CLOCK() - t0)
    return best


def layer_time(module, x, device, amp, steps) -> float:
    """Minimum seconds of one forward+backward of a layer."""

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            out = module(x)
        out.float().square().mean().backward()
        module.zero_grad(set_to_none=True)

    return best_seconds(step, device, steps, warmup=2)


#: torch.profiler operator names -> the kind of work the profile table groups them under
KINDS = {
    "convolution": ("aten::mkldnn_convolution", "aten::convolution_backward", "aten::_convolution"),
    "matmul": ("aten::bmm", "aten::baddbmm", "aten::mm", "aten::addmm"),
    "layout copy": ("aten::copy_", "aten::clone"),
    "max pooling": ("aten::max_pool2d_with_indices", "aten::max_pool2d_with_indices_backward"),
    "softmax": ("aten::_softmax", "aten::_softmax_backward_data"),
}


def profile_modules(model, batch: int, device: torch.device, steps: int) -> None:
    """Per LHC module of ``model``: fwd+bwd time vs a same-shape 3x3 convolution, and the
    profiler's self time by kind of work."""
    from torch.profiler import ProfilerActivity, profile

    size = model.input_size
    shapes = {}  # module name -> its input shape, from one forward pass

    def record(name):
        def hook(_module, args):
            shapes[name] = args[0].shape  # (returns None: the input is left as it is)

        return hook

    hooks = [m.register_forward_pre_hook(record(name)) for name, m in model.lhc_modules().items()]
    with torch.no_grad():
        model(torch.zeros(1, 3, size, size, device=device))
    for h in hooks:
        h.remove()
    for name, module in model.lhc_modules().items():
        c, h, w = shapes[name][1:]
        x = torch.rand(batch, c, h, w, device=device, requires_grad=True)
        conv = torch.nn.Conv2d(c, c, 3, padding=1).to(device)
        t_module = layer_time(module, x, device, False, steps)
        t_conv = layer_time(conv, x, device, False, steps)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(steps):
                module(x).float().square().mean().backward()
        totals = dict.fromkeys((*KINDS, "other"), 0.0)
        for event in prof.key_averages():
            kind = next((k for k, ops in KINDS.items() if event.key in ops), "other")
            totals[kind] += event.self_cpu_time_total
        whole = sum(totals.values()) or 1.0
        shares = ", ".join(f"{kind} {100 * t / whole:.0f}%" for kind, t in totals.items())
        print(
            f"{name} ({c}x{h}x{w}) fwd+bwd {1e3 * t_module / batch:.2f} ms/image = "
            f"{t_module / t_conv:.2f}x a 3x3 convolution of its shape; profile: {shares}"
        )
    # The arithmetic rates to compare with: module 1's query/key product, a large square
    # matrix product, and a backbone-shaped convolution (forward, no gradients).
    m1 = next(iter(model.lhc_modules().values()))
    heads, r, d = m1.qk_weight.shape
    a = torch.randn(heads, batch * m1.channels, r, device=device)
    work = {  # what -> (call, multiply-accumulates per call)
        f"query/key bmm ({heads}x{batch * m1.channels}x{r}x{d})": (
            lambda: torch.bmm(a, m1.qk_weight.detach()),
            heads * batch * m1.channels * r * d,
        ),
    }
    big = torch.randn(1024, 1024, device=device)
    work["1024x1024 matmul"] = (lambda: big @ big, 1024**3)
    xc = torch.randn(batch, 64, 56, 56, device=device)
    conv = torch.nn.Conv2d(64, 64, 3, padding=1).to(device)
    work["64x56x56 3x3 convolution"] = (lambda: conv(xc), batch * 64 * 64 * 9 * 56 * 56)
    with torch.no_grad():
        rates = {what: macs / best_seconds(fn, device, 5) / 1e9 for what, (fn, macs) in work.items()}
    print("arithmetic rate: " + ", ".join(f"{what} {gmacs:.1f} GMAC/s" for what, gmacs in rates.items()))


def compile_vs_eager(
    size: int,
    batch: int,
    device: torch.device,
    rounds: int,
    steps: int,
    archs: tuple[str, ...] = ("resnet34v2", "lhc_net"),
) -> None:
    """train.compile: whole training steps (forward, backward, SGD step) of torch.compile'd
    ResNet34v2 and LHC-Net against eager, interleaved; the first compiled call's time too.
    At 224 px the paper's models; at other sizes the demo recipe's (Table 2 scaled to 48 px)."""
    from fertool.models import arch_from_recipe
    from fertool.recipe import load_recipe

    recipe = load_recipe(None if size == 224 else "demo", [f"model.input_size={size}"])
    torch.manual_seed(0)
    x = torch.rand(batch, 3, size, size, device=device) * 255
    y = torch.randint(0, 7, (batch,), device=device)
    for arch in archs:
        name, arch_args = arch_from_recipe(recipe.model, "lhc" if arch == "lhc_net" else "backbone")
        eager = build_model(name, **arch_args).to(device)
        compiled_model = build_model(name, **arch_args).to(device)
        compiled_model.load_state_dict(eager.state_dict())
        nets = {"eager": eager, "compiled": torch.compile(compiled_model)}
        opts = {k: torch.optim.SGD(n.parameters(), lr=1e-3) for k, n in nets.items()}

        def train_step(kind, nets=nets, opts=opts):
            nets[kind].train()
            loss = F.cross_entropy(nets[kind](x), y)
            loss.backward()
            opts[kind].step()
            opts[kind].zero_grad(set_to_none=True)

        _sync(device)
        t0 = time.perf_counter()
        train_step("compiled")  # compiles forward and backward
        _sync(device)
        first = time.perf_counter() - t0
        train_step("eager")
        times: dict[str, list[float]] = {"eager": [], "compiled": []}
        for _ in range(rounds):
            for kind in nets:
                for _ in range(steps):
                    _sync(device)
                    t0 = CLOCK()
                    train_step(kind)
                    _sync(device)
                    times[kind].append(CLOCK() - t0)
        e, c = min(times["eager"]), min(times["compiled"])
        print(
            f"{arch:11s} training step at {size}x{size}, batch {batch}: eager {1e3 * e / batch:8.2f} ms/image, "
            f"compiled {1e3 * c / batch:8.2f} ms/image, compiled/eager {c / e:.3f} (min of {rounds * steps}); "
            f"first compiled step (compilation) {first:.1f} s"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--steps", type=int, default=2, help="steps per model per round")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--cpu-time", action="store_true", help="one thread, timed by its CPU time")
    ap.add_argument("--profile", action="store_true", help="where each LHC module's time goes (CPU)")
    ap.add_argument(
        "--compile",
        action="store_true",
        help="only train.compile: compiled against eager training steps of ResNet34v2 and LHC-Net",
    )
    ap.add_argument(
        "--arch",
        nargs="+",
        default=["resnet34v2", "lhc_net"],
        choices=["resnet34v2", "lhc_net"],
        help="the models of --compile",
    )
    args = ap.parse_args()
    device = torch.device(args.device)
    if args.profile and device.type != "cpu":
        ap.error("--profile is for the CPU")
    global CLOCK
    if args.cpu_time:
        if device.type != "cpu":
            ap.error("--cpu-time is for the CPU")
        args.threads = 1
        CLOCK = time.thread_time
    if args.threads:
        torch.set_num_threads(args.threads)
    cuda = device.type == "cuda"
    batch = args.batch or (128 if cuda else 8)
    if args.compile:
        print(
            f"device: {device}, {torch.get_num_threads()} threads, float32, "
            f"{'thread CPU time' if args.cpu_time else 'wall clock'}"
        )
        compile_vs_eager(args.size, batch, device, args.rounds, args.steps, tuple(args.arch))
        return
    amp = cuda
    fmt = torch.channels_last if cuda else torch.contiguous_format
    if cuda:
        torch.backends.cudnn.benchmark = True
        print(f"device: {torch.cuda.get_device_name(device)}, batch {batch}, bf16 autocast, channels_last")
    else:
        clock = "thread CPU time" if args.cpu_time else "wall clock"
        print(f"device: cpu ({torch.get_num_threads()} threads), batch {batch}, float32, {clock}")
    torch.manual_seed(0)
    x = (torch.rand(batch, 3, args.size, args.size, device=device) * 255).to(memory_format=fmt)
    y = torch.randint(0, 7, (batch,), device=device)
    models = {
        arch: build_model(arch, input_size=args.size).to(device, memory_format=fmt)
        for arch in ("resnet34v2", "lhc_net", "resnet34_tv")
    }
    for model in models.values():  # warm-up
        step_times(model, x, y, device, amp, 2)
    # Interleaved rounds so that a load change on a shared machine hits both models alike;
    # the minimum is the least disturbed measurement, the median the typical one.
    times: dict[str, list[float]] = {arch: [] for arch in models}
    for _ in range(args.rounds):
        for arch, model in models.items():
            times[arch] += step_times(model, x, y, device, amp, args.steps)
    for arch, ts in times.items():
        ts.sort()
        print(
            f"{arch:11s} forward+backward: min {1e3 * ts[0] / batch:8.2f} ms/image, "
            f"median {1e3 * ts[len(ts) // 2] / batch:8.2f} ms/image ({batch / ts[0]:7.1f} img/s best)"
        )
    best = {a: min(ts) for a, ts in times.items()}
    med = {a: ts[len(ts) // 2] for a, ts in times.items()}
    print(
        f"LHC-Net / ResNet34v2 step-time ratio: {best['lhc_net'] / best['resnet34v2']:.3f} (min), "
        f"{med['lhc_net'] / med['resnet34v2']:.3f} (median)"
    )
    print(
        f"LHC-Net / torchvision ResNet34 step-time ratio: {best['lhc_net'] / best['resnet34_tv']:.3f} (min), "
        f"{med['lhc_net'] / med['resnet34_tv']:.3f} (median)"
    )

    # LHC module 1 (56x56x64, 8 heads): batched vs per-head loop
    m = LHC(64, heads=8, dim=196, size=56).to(device)
    xl = torch.randn(batch, 64, 56, 56, device=device, requires_grad=False).to(memory_format=fmt)
    tb = layer_time(m, xl, device, amp, 3 * args.rounds)
    tl = layer_time(LoopLHC(m), xl, device, amp, 3 * args.rounds)
    print(
        f"LHC1 layer fwd+bwd, batched: {1e3 * tb / batch:.3f} ms/image; per-head loop: "
        f"{1e3 * tl / batch:.3f} ms/image; loop / batched = {tl / tb:.2f}"
    )
    if args.profile:
        profile_modules(models["lhc_net"], batch, device, 3)
    print(
        f"ratio train lhc_net/resnet34v2: {best['lhc_net'] / best['resnet34v2']:.2f}                   (goal <= 1.25)"
    )
    print(
        f"ratio train lhc_net/tv_resnet34: {best['lhc_net'] / best['resnet34_tv']:.2f}                  (goal <= 1.30)"
    )


if __name__ == "__main__":
    main()
