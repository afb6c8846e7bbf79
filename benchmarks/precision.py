"""What the faster precisions cost: bf16 / tf32 outputs of ResNet34v2 and LHC-Net against float32.

    python benchmarks/precision.py [--device cpu|cuda] [--batch N]

Runs both networks in eval mode on the same images in float32 (TF32 off), then with each
faster precision of ``fertool.utils.precision`` that the device offers (bf16 autocast on
the CPU; bf16 and tf32 on CUDA), and prints per network the relative L2 error of the
logits and the largest change of a softmax probability.  With the reference fixtures
beside the checkout (``tests/conftest.py`` finds them) the networks carry the reference
weights and the reference input; without them, seeded random weights and images (say so).
Prints numbers only.
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
    return {"logit_rel_l2": float((got - want).norm() / want.norm()), "max_abs_dp": float(dp)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=2, help="images when no reference input is found")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.set_num_threads(2)
    nets, x, source = reference_networks(args.batch)
    modes = ["bf16"] + (["tf32"] if device.type == "cuda" else [])
    print(f"device {device}, {source}, {len(x)} images")
    for mode in modes:
        errors = {name: output_differences(net, x, device, mode) for name, net in nets.items()}
        for name, e in errors.items():
            print(f"{mode} vs fp32  {name:<11} logits rel. L2 {e['logit_rel_l2']:.2e}   max |dp| {e['max_abs_dp']:.2e}")
        ratio = errors["lhc_net"]["logit_rel_l2"] / errors["resnet34v2"]["logit_rel_l2"]
        print(f"{mode} vs fp32  lhc_net / resnet34v2 logit error: {ratio:.2f}x")


if __name__ == "__main__":
    main()
