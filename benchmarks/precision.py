"""What the faster precisions cost: bf16 / tf32 outputs of ResNet34v2 and LHC-Net against float32.

    python benchmarks/precision.py [--device cpu|cuda] [--batch N]
    python benchmarks/precision.py --resnet R.pt --lhc L.pt   # a trained pair, on sample faces
    python benchmarks/precision.py --sensitivity               # where LHC-Net's bf16 error comes from

Runs both networks in eval mode on the same images in float32 (TF32 off), then with each
faster precision of ``fertool.utils.precision`` that the device offers (bf16 autocast on
the CPU; bf16 and tf32 on CUDA), and prints per network the relative L2 error of the
logits and the largest change of a softmax probability.  With the reference fixtures
beside the checkout (``tests/conftest.py`` finds them) the networks carry the reference
weights and the reference input; without them, seeded random weights and images (say so).
``--resnet``/``--lhc`` take a trained pair instead (e.g. the demo's
``runs/demo/seed-1/resnet/stage4/best.pt`` and ``runs/demo/seed-1/stage4/best.pt``), run on the
synthetic sample's 105 PrivateTest faces; the per-image median of the relative error is
printed beside the error over the whole batch.  ``--sensitivity`` (CPU) adds two
diagnoses of LHC-Net's error: the same comparison with the five LHC modules computed wholly
in float32 under bf16 autocast, and, in an otherwise float32 network, the logit error that
rounding only one module's input to bf16 causes.  Prints numbers only.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fertool.models import build_model  # noqa: E402
from fertool.utils import precision  # noqa: E402


def reference_networks(batch: int) -> tuple[dict[str, torch.nn.Module], torch.Tensor, str]:
    """(networks by name, input (B, 3, 224, 224), where the weights came from)."""
    nets = {"resnet34v2": build_model("resnet34v2").eval(), "lhc_net": build_model("lhc_net").eval()}
    try:
        import numpy as np

        from tests._reference_weights import load_json, reference_state_dict
        from tests.conftest import reference_file

        tensors = load_json(reference_file("full_network.json"))
        with np.load(reference_file("full_network.npz")) as ref:
            x = torch.from_numpy(ref["input"]).permute(0, 3, 1, 2).contiguous()  # NHWC -> NCHW
    except Exception:  # noqa: BLE001 - fixtures absent (pytest.skip is an Exception subclass too)
        torch.manual_seed(0)
        nets = {"resnet34v2": build_model("resnet34v2").eval(), "lhc_net": build_model("lhc_net").eval()}
        return nets, torch.rand(batch, 3, 224, 224) * 255, "random weights (no reference fixtures found)"
    nets["resnet34v2"].load_state_dict(reference_state_dict(tensors, "backbone"), strict=False)
    nets["lhc_net"].load_state_dict(reference_state_dict(tensors, "lhc"), strict=False)
    return nets, x, "reference weights and input"


def trained_networks(resnet: str, lhc: str) -> tuple[dict[str, torch.nn.Module], torch.Tensor, str]:
    """A trained (ResNet34v2, LHC-Net) pair and the sample PrivateTest faces at their size."""
    from infer import sample_split  # benchmarks/infer.py: the sample faces infer.py measures on

    from fertool.checkpoint import load_checkpoint
    from fertool.surgery import model_from_checkpoint

    nets = {
        name: model_from_checkpoint(load_checkpoint(path)).eval()
        for name, path in (("resnet34v2", resnet), ("lhc_net", lhc))
    }
    sizes = {net.input_size for net in nets.values()}
    if len(sizes) != 1:
        raise SystemExit(f"the two checkpoints take different input sizes: {sorted(sizes)}")
    split = sample_split(2, sizes.pop())  # PrivateTest
    x = split.load(torch.arange(len(split.labels))).float().contiguous()
    return nets, x, f"trained weights ({resnet}, {lhc}), sample PrivateTest faces"


def output_differences(model: torch.nn.Module, x: torch.Tensor, device: torch.device, mode: str) -> dict:
    """Relative L2 logit error and max |delta p| of ``mode`` against float32."""
    model = model.to(device)
    x = x.to(device)
    with torch.inference_mode():
        with precision(device, "fp32"):
            want = model(x).float()
        with precision(device, mode):
            got = model(x).float()
    dp = (torch.softmax(got, -1) - torch.softmax(want, -1)).abs().max()
    per_image = (got - want).norm(dim=1) / want.norm(dim=1)
    return {
        "logit_rel_l2": float((got - want).norm() / want.norm()),
        "max_abs_dp": float(dp),
        "median_rel_l2": float(per_image.quantile(0.5)),
        "per_image": per_image.tolist(),
        "top1_agreement": float((got.argmax(1) == want.argmax(1)).float().mean()),
    }


def sensitivity(nets: dict[str, torch.nn.Module], x: torch.Tensor) -> None:
    """Print where LHC-Net's bf16 error comes from (see the module docstring)."""
    import functools

    lhc = nets["lhc_net"]
    modules = lhc.lhc_modules()

    def float32_forward(module, forward, t):
        with torch.autocast(t.device.type, enabled=False):
            return forward(t.float())

    for module in modules.values():
        module.forward = functools.partial(float32_forward, module, module.forward)
    try:
        errors = {name: output_differences(net, x, x.device, "bf16")["logit_rel_l2"] for name, net in nets.items()}
    finally:
        for module in modules.values():
            del module.forward  # back to the class's forward
    print(
        f"bf16 vs fp32, LHC modules in float32: lhc_net {errors['lhc_net']:.2e}, "
        f"{errors['lhc_net'] / errors['resnet34v2']:.2f}x resnet34v2"
    )
    with torch.inference_mode():
        want = lhc(x)
        for name, module in modules.items():
            hook = module.register_forward_pre_hook(lambda _m, args: (args[0].bfloat16().float(),))
            try:
                got = lhc(x)
            finally:
                hook.remove()
            print(
                f"float32 network, only {name}'s input rounded to bf16: lhc_net logits rel. L2 "
                f"{float((got - want).norm() / want.norm()):.2e}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=2, help="images when no reference input is found")
    parser.add_argument("--resnet", help="a trained ResNet34v2 checkpoint (with --lhc)")
    parser.add_argument("--lhc", help="a trained LHC-Net checkpoint (with --resnet)")
    parser.add_argument("--sensitivity", action="store_true", help="where LHC-Net's bf16 error comes from")
    args = parser.parse_args()
    if (args.resnet is None) != (args.lhc is None):
        parser.error("--resnet and --lhc go together")
    device = torch.device(args.device)
    torch.set_num_threads(2)
    nets, x, source = trained_networks(args.resnet, args.lhc) if args.lhc else reference_networks(args.batch)
    modes = ["bf16"] + (["tf32"] if device.type == "cuda" else [])
    print(f"device {device}, {source}, {len(x)} images")
    for mode in modes:
        errors = {name: output_differences(net, x, device, mode) for name, net in nets.items()}
        for name, e in errors.items():
            print(
                f"{mode} vs fp32  {name:<11} logits rel. L2 {e['logit_rel_l2']:.2e} (per-image median "
                f"{e['median_rel_l2']:.2e})   max |dp| {e['max_abs_dp']:.2e}   top-1 agreement "
                f"{100 * e['top1_agreement']:.1f}%"
            )
        ratio = errors["lhc_net"]["logit_rel_l2"] / errors["resnet34v2"]["logit_rel_l2"]
        median = errors["lhc_net"]["median_rel_l2"] / errors["resnet34v2"]["median_rel_l2"]
        print(f"{mode} vs fp32  lhc_net / resnet34v2 logit error: {ratio:.2f}x (per-image medians: {median:.2f}x)")
        if len(x) <= 4:
            each = [a / b for a, b in zip(errors["lhc_net"]["per_image"], errors["resnet34v2"]["per_image"])]
            print(
                f"{mode} vs fp32  lhc_net / resnet34v2 logit error per image: " + ", ".join(f"{r:.2f}x" for r in each)
            )

    if args.sensitivity:
        sensitivity(nets, x.to(device))


if __name__ == "__main__":
    main()
