"""Deployment: classify faces in users' photos and videos, export models for other runtimes.

* :mod:`fertool.deploy.faces` — face detection (the bundled BlazeFace on ONNX Runtime,
  OpenCV YuNet DNN, OpenCV Haar cascade, scikit-image LBP cascade), eyes-level alignment, and the preparation of a face crop into exactly the input
  the network was trained on (docs/protocol.md §1);
* :mod:`fertool.deploy.predict` — ``predict_paths`` over images, folders and videos,
  annotated outputs, the live webcam loop;
* :mod:`fertool.deploy.video` — one video, streamed: tracked faces, the annotated mp4, the
  per-frame CSV, per-face plots and the summary;
* :mod:`fertool.deploy.results` — what prediction yields (per-face results, per-input
  events), the faces waiting for a classification batch, the annotation drawing;
* :mod:`fertool.deploy.tracking` — face ids across video frames, smoothing, per-frame CSV
  tables, per-face plots and summaries;
* :mod:`fertool.deploy.export` — ONNX / TorchScript export with the preprocessing
  contract in the metadata and a parity check.
"""

from ..tempfiles import umask


def file_mode() -> int:
    """Permissions of a new output file under the current umask (``mkstemp`` creates 0600)."""
    return 0o666 & ~umask()
