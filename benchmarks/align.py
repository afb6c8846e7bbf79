"""Does turning faces eyes-level before the crop change what fertool predict sees and says?

    python benchmarks/align.py [--checkpoint MODEL.pt] [--faces 40] [--angles -30 -15 0 15 30]

Real photographs: scikit-image's astronaut() and the first ``--faces`` faces of
``lfw_subset()`` (25x25 LFW crops, shown at 100 px on a grey border so that the detector sees
a whole head).  Each is turned by every ``--angle`` (OpenCV, edges replicated) and run through
the bundled BlazeFace detector; per angle the script prints

* ``found``: faces detected;
* ``tilt``: mean |eye-line angle| of the detected landmarks (before alignment) -- how much
  there is to correct;
* ``crop MAE plain/aligned``: mean absolute grey difference (0-255) between the 48x48 face
  fed to the network for the turned copy and for the upright original, without and with
  alignment (each against its own upright crop);
* with a checkpoint (default: a random-weight ResNet34 at 32 px whose BatchNorm statistics
  come from random images -- it has seen no face, so its numbers measure how much the input
  change moves a network's output, not whether the expression is right):
  ``agreement plain/aligned``: the share of faces whose top-1 class equals the upright
  original's, and ``L1``: mean L1 distance of the probability vectors to the upright ones.

The closing lines state the finding over all non-zero angles.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _rotate(image: np.ndarray, degrees: float) -> np.ndarray:
    h, w = image.shape[:2]
    m = cv2.getRotationMatrix2D((w / 2, h / 2), degrees, 1.0)
    return cv2.warpAffine(image, m, (w, h), borderMode=cv2.BORDER_REPLICATE)


def _photos(n_faces: int) -> list[np.ndarray]:
    from skimage import data

    photos = [cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)]
    for face in (data.lfw_subset()[:n_faces] * 255).round().astype(np.uint8):
        big = cv2.resize(face, (100, 100), interpolation=cv2.INTER_CUBIC)
        photos.append(
            cv2.cvtColor(cv2.copyMakeBorder(big, 60, 60, 60, 60, cv2.BORDER_CONSTANT, value=128), cv2.COLOR_GRAY2BGR)
        )
    return photos


def _random_checkpoint(folder: Path) -> Path:
    import torch
    from torch import nn

    from fertool.checkpoint import make_checkpoint, save_checkpoint
    from fertool.models import build_model

    torch.manual_seed(0)
    args = {"input_size": 32, "hidden": [16]}
    model = build_model("resnet34v2", **args)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.momentum = None
            m.reset_running_stats()
    model.train()
    with torch.no_grad():
        model(torch.rand(16, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 255)
    path = folder / "random.pt"
    save_checkpoint(path, make_checkpoint(arch="resnet34v2", arch_args=args, state_dict=model.state_dict()))
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=None)
    parser.add_argument("--faces", type=int, default=40)
    parser.add_argument("--angles", type=float, nargs="+", default=[-30, -15, 0, 15, 30])
    parser.add_argument("--margin", type=float, default=0.1)
    args = parser.parse_args(argv)

    from fertool.deploy import faces as F
    from fertool.deploy.predict import FaceClassifier

    detector = F.load_detector("blazeface")
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = args.checkpoint or _random_checkpoint(Path(tmp))
        clf = FaceClassifier.from_checkpoint(ckpt, batch_size=64)
    print(
        f"model: {args.checkpoint or 'random-weight resnet34v2 at 32 px (has seen no face)'}; "
        f"detector: {F.describe_detector(detector)}"
    )
    photos = _photos(args.faces)

    def faces48(image):
        boxes = detector.detect(image)
        if not boxes:
            return None
        box = boxes[0]
        return box, {a: F.face_to_48(F.crop_face(image, box, args.margin, align=a)) for a in (False, True)}

    def classify(crops):
        prepared = F.prepare_faces(crops, clf.size, **clf.preparation)
        return clf.classify(prepared)[0]

    upright = [faces48(p) for p in photos]
    keep = [i for i, u in enumerate(upright) if u is not None]
    ref_probs = {a: classify([upright[i][1][a] for i in keep]) for a in (False, True)}
    totals = {a: [0, 0, 0.0, 0.0] for a in (False, True)}  # agree, n, L1 sum, MAE sum
    for angle in args.angles:
        found, tilts = [], []
        crops = {False: [], True: []}
        for j, i in enumerate(keep):
            got = faces48(_rotate(photos[i], angle))
            if got is None:
                continue
            box, c = got
            found.append(j)
            tilts.append(abs(F.eye_angle(box)))
            for a in (False, True):
                crops[a].append(c[a])
        line = f"align angle {angle:+.0f}: found {len(found)}/{len(keep)} tilt {np.mean(tilts):.1f} deg"
        stats = {}
        for a in (False, True):
            if not found:
                continue
            mae = np.mean([np.abs(c.astype(float) - upright[keep[j]][1][a]).mean() for c, j in zip(crops[a], found)])
            probs = classify(crops[a])
            ref = ref_probs[a][found]
            agree = float(np.mean(probs.argmax(1) == ref.argmax(1)))
            l1 = float(np.abs(probs - ref).sum(1).mean())
            stats[a] = (mae, agree, l1)
            if angle != 0:
                t = totals[a]
                t[0] += agree * len(found)
                t[1] += len(found)
                t[2] += l1 * len(found)
                t[3] += mae * len(found)
        if stats:
            line += (
                f" crop MAE plain {stats[False][0]:.1f} aligned {stats[True][0]:.1f}"
                f" agreement plain {stats[False][1]:.0%} aligned {stats[True][1]:.0%}"
                f" L1 plain {stats[False][2]:.3f} aligned {stats[True][2]:.3f}"
            )
        print(line, flush=True)
    if totals[False][1]:
        p, a = totals[False], totals[True]
        print(
            f"finding (turned copies, {p[1]} faces): crop MAE plain {p[3] / p[1]:.1f} aligned {a[3] / a[1]:.1f}; "
            f"top-1 agreement with the upright face plain {p[0] / p[1]:.1%} aligned {a[0] / a[1]:.1%}; "
            f"L1 plain {p[2] / p[1]:.3f} aligned {a[2] / a[1]:.3f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
