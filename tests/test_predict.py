"""fertool predict: face detection on a real photograph, preparation like the training data,
classification equal to a direct model call, per-input problems, streamed video, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from fertool import CLASS_NAMES
from fertool.checkpoint import make_checkpoint, save_checkpoint
from fertool.data.resize import resize_bilinear
from fertool.deploy import faces as F
from fertool.deploy.predict import (
    FaceClassifier,
    FaceResult,
    InputDone,
    InputProblem,
    predict_paths,
    preparation_from_recipe,
    resolve_tta,
)
from fertool.errors import FertoolError
from fertool.evaluation.runtimes import bf16_supported
from fertool.models import build_model

from .conftest import TINY_WIDTH, load_reference

skimage_data = pytest.importorskip("skimage.data", reason="scikit-image ships the astronaut photograph")

SIZE = 32
#: Eileen Collins' face in skimage.data.astronaut() (512x512): centre and side, read off the
#: photograph (face from about x 175-275, y 65-165).
FACE_CENTRE = (225.0, 115.0)


def make_tiny_checkpoint(path: Path, *, arch: str = "resnet34v2", size: int = SIZE, seed: int = 0, **arch_args) -> Path:
    """A random-weight checkpoint with a small head whose BatchNorm statistics come from
    random 0..255 images, so that its probabilities are neither all 0 nor all 1."""
    torch.manual_seed(seed)
    args = {"input_size": size, "hidden": [16], **TINY_WIDTH, **arch_args}
    model = build_model(arch, **args)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.momentum = None  # cumulative average: the running stats become the batch stats
            m.reset_running_stats()
    model.train()
    with torch.no_grad():
        model(torch.rand(16, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 255)
    save_checkpoint(path, make_checkpoint(arch=arch, arch_args=args, state_dict=model.state_dict()))
    return path


@pytest.fixture(scope="module")
def ckpt_path(tmp_path_factory) -> Path:
    return make_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt")


@pytest.fixture(scope="module")
def classifier(ckpt_path) -> FaceClassifier:
    return FaceClassifier.from_checkpoint(ckpt_path, batch_size=4)


@pytest.fixture(scope="module")
def detector():
    return F.load_detector("blazeface")  # auto's choice without a cached YuNet model


@pytest.fixture(scope="module")
def astronaut_bgr() -> np.ndarray:
    return cv2.cvtColor(skimage_data.astronaut(), cv2.COLOR_RGB2BGR)


@pytest.fixture
def photo(tmp_path, astronaut_bgr) -> Path:
    path = tmp_path / "astronaut.jpg"
    cv2.imwrite(str(path), astronaut_bgr, [cv2.IMWRITE_JPEG_QUALITY, 95])
    return path


def _no_face_image() -> np.ndarray:
    """A smooth colour gradient: nothing a face detector should fire on."""
    x = np.linspace(0, 255, 200, dtype=np.float32)
    img = np.stack([np.tile(x, (150, 1)), np.tile(x[::-1], (150, 1)), np.full((150, 200), 80, np.float32)], -1)
    return img.astype(np.uint8)


def _assert_astronaut_face(box: F.Box, scale: float = 1.0) -> None:
    cx, cy = box.x + box.w / 2, box.y + box.h / 2
    assert abs(cx - FACE_CENTRE[0] * scale) < 20 * scale and abs(cy - FACE_CENTRE[1] * scale) < 20 * scale, box
    assert 70 * scale <= box.w <= 130 * scale and 70 * scale <= box.h <= 130 * scale, box


# --------------------------------------------------------------------------- detection


@pytest.mark.skipif(not F.haar_available(), reason=f"OpenCV {cv2.__version__} ships no Haar cascade (OpenCV 5)")
def test_haar_cascade_finds_the_astronaut_face(astronaut_bgr):
    boxes = F.load_detector("haar").detect(astronaut_bgr)
    assert len(boxes) == 1
    _assert_astronaut_face(boxes[0])


def test_lbp_cascade_finds_the_astronaut_face(astronaut_bgr):
    boxes = F.load_detector("lbp").detect(astronaut_bgr)
    assert len(boxes) == 1
    _assert_astronaut_face(boxes[0])


def test_auto_detector_without_a_cached_yunet_is_the_bundled_blazeface(tmp_path, monkeypatch, astronaut_bgr):
    monkeypatch.setenv("FERTOOL_HOME", str(tmp_path))
    detector = F.load_detector("auto")
    assert detector.name == "blazeface" and "YuNet model is not in the cache" in detector.note
    boxes = F.detect_faces(astronaut_bgr, detector)
    assert len(boxes) == 1
    _assert_astronaut_face(boxes[0])


def test_no_face_in_a_synthetic_image(detector):
    assert F.detect_faces(_no_face_image(), detector) == []


def test_detector_files_missing_unreadable_or_unsupported(tmp_path):
    with pytest.raises(FertoolError, match="not found"):
        F.load_detector(tmp_path / "yunet.onnx")
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not an onnx model")
    with pytest.raises(FertoolError, match="cannot load as a YuNet face detector"):
        F.load_detector(garbage)
    other = tmp_path / "model.caffemodel"
    other.write_bytes(b"x")
    with pytest.raises(FertoolError, match="unsupported detector model"):
        F.load_detector(other)


# --------------------------------------------------------------------------- preparation


def test_expand_box_is_square_with_margin_and_clamped():
    # 100x80 box at (50, 60): side 100 -> 120 with 10% margin each side, centred at (100, 100).
    assert F.expand_box(F.Box(50, 60, 100, 80), 0.1, 640, 480) == (40, 40, 160, 160)
    # Near the top-left corner the crop is cut at the image border.
    assert F.expand_box(F.Box(0, 5, 50, 50), 0.2, 640, 480) == (0, 0, 60, 65)
    with pytest.raises(FertoolError, match="margin"):
        F.expand_box(F.Box(0, 0, 10, 10), -0.1, 100, 100)


def test_prepared_face_is_the_reference_training_image():
    """Resize + floor bit-identical to the reference ETL (fixture); the JPEG round trip is
    the one of cv2 at quality 100, 4:4:4, as the stored training images."""
    ref = load_reference("prepare_resize.npz")
    for src, prepared in zip(ref["src"], ref["prepared"]):
        np.testing.assert_array_equal(F.prepare_face(src, 224, jpeg=False), prepared[..., 0])
        ok, buf = cv2.imencode(
            ".jpg",
            prepared,
            [cv2.IMWRITE_JPEG_QUALITY, 100, cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444],
        )
        np.testing.assert_array_equal(F.prepare_face(src, 224), cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE))


def test_preparation_follows_the_checkpoint_recipe():
    assert preparation_from_recipe(None) == {"truncate": True, "quality": 100, "subsampling": "4:4:4"}
    recipe = {"prepare": {"jpeg_quality": 90, "subsampling": "4:2:0", "truncate": False}}
    assert preparation_from_recipe(recipe) == {"truncate": False, "quality": 90, "subsampling": "4:2:0"}


def test_face_to_input_is_grey_replicated_float_0_255():
    crop = np.random.default_rng(1).integers(0, 256, (97, 90), dtype=np.uint8)
    x = F.face_to_input(crop, SIZE)
    assert x.shape == (3, SIZE, SIZE) and x.dtype == torch.float32
    assert torch.equal(x[0], x[1]) and torch.equal(x[0], x[2])
    assert 0 <= float(x.min()) and float(x.max()) <= 255 and torch.equal(x, x.round())


# --------------------------------------------------------------------------- classification


def _expected_probs(image_bgr: np.ndarray, box: F.Box, model: nn.Module, margin: float = 0.1, flip: bool = False):
    """The crop and preparation written out step by step, then a direct model call."""
    h, w = image_bgr.shape[:2]
    side = max(box.w, box.h) * (1 + 2 * margin)
    cx, cy = box.x + box.w / 2, box.y + box.h / 2
    x0, y0 = max(0, round(cx - side / 2)), max(0, round(cy - side / 2))
    x1, y1 = min(w, round(cx + side / 2)), min(h, round(cy + side / 2))
    grey = cv2.cvtColor(image_bgr[y0:y1, x0:x1], cv2.COLOR_BGR2GRAY)
    face48 = cv2.resize(grey, (48, 48), interpolation=cv2.INTER_AREA)
    prepared = torch.floor(resize_bilinear(torch.from_numpy(face48), SIZE)).clamp(0, 255).to(torch.uint8).numpy()
    rgb = np.repeat(prepared[..., None], 3, axis=-1)
    ok, buf = cv2.imencode(
        ".jpg",
        rgb,
        [cv2.IMWRITE_JPEG_QUALITY, 100, cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444],
    )
    stored = cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1].copy()  # (S, S, 3) RGB
    x = torch.from_numpy(stored).permute(2, 0, 1)[None].float()  # (1, 3, S, S)
    if flip:
        x = x.flip(-1)
    with torch.no_grad():
        return torch.softmax(model.eval()(x), dim=-1)[0].numpy()


def test_probabilities_equal_a_direct_model_call_on_the_prepared_crop(photo, classifier, detector, astronaut_bgr):
    """Without alignment (the aligned crop: tests/test_predict_video.py)."""
    classifier = FaceClassifier(classifier.model, size=SIZE, batch_size=4, align=False)
    events = list(predict_paths([photo], classifier, detector=detector))
    faces = [e for e in events if isinstance(e, FaceResult)]
    assert len(faces) == 1 and isinstance(events[-1], InputDone) and events[-1].faces == 1
    r = faces[0]
    assert r.path == str(photo) and r.frame is None and r.face == 0
    _assert_astronaut_face(r.box)
    p = np.array([r.probs[c] for c in CLASS_NAMES])
    assert list(r.probs) == list(CLASS_NAMES)
    assert p.sum() == pytest.approx(1.0, abs=1e-5)
    assert r.label == CLASS_NAMES[int(p.argmax())]
    image = cv2.imread(str(photo))
    np.testing.assert_allclose(p, _expected_probs(image, r.box, classifier.model), atol=1e-5)
    assert r.tta_probs is None
    assert json.loads(json.dumps(r.to_dict()))["box"] == r.box.as_list()


def test_flip_tta_is_the_mean_of_plain_and_mirrored_predictions(photo, classifier, detector):
    clf = FaceClassifier(classifier.model, size=SIZE, tta=resolve_tta("flip"), tta_name="flip", align=False)
    (r,) = [e for e in predict_paths([photo], clf, detector=detector) if isinstance(e, FaceResult)]
    image = cv2.imread(str(photo))
    plain = _expected_probs(image, r.box, clf.model)
    mirrored = _expected_probs(image, r.box, clf.model, flip=True)
    tta = np.array([r.tta_probs[c] for c in CLASS_NAMES])
    np.testing.assert_allclose(tta, (plain + mirrored) / 2, atol=1e-5)
    assert r.tta_label == CLASS_NAMES[int(tta.argmax())]
    with pytest.raises(FertoolError, match="unknown TTA preset"):
        resolve_tta("nope")


def test_bad_inputs_are_reported_and_the_others_still_processed(tmp_path, photo, classifier, detector):
    noface = tmp_path / "gradient.png"
    cv2.imwrite(str(noface), _no_face_image())
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    text = tmp_path / "notes.jpg"
    text.write_text("this is not a picture\n")
    empty = tmp_path / "empty"
    empty.mkdir()
    missing = tmp_path / "missing.jpg"
    inputs = [noface, corrupt, photo, text, empty, missing]
    events = list(predict_paths(inputs, classifier, detector=detector))
    problems = {Path(e.path).name: e.message for e in events if isinstance(e, InputProblem)}
    assert set(problems) == {"gradient.png", "corrupt.png", "notes.jpg", "empty", "missing.jpg"}
    assert "no face" in problems["gradient.png"]
    assert "decode" in problems["corrupt.png"] and "decode" in problems["notes.jpg"]
    assert "no images" in problems["empty"] and "no such file" in problems["missing.jpg"]
    assert [e.path for e in events if isinstance(e, FaceResult)] == [str(photo)]
    # Events keep input order.
    order = [Path(e.path).name for e in events if not isinstance(e, FaceResult)]
    assert order == ["gradient.png", "corrupt.png", "astronaut.jpg", "notes.jpg", "empty", "missing.jpg"]


def test_folders_are_searched_recursively_and_outputs_keep_names(tmp_path, astronaut_bgr, classifier, detector):
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    cv2.imwrite(str(folder / "a.png"), astronaut_bgr)
    cv2.imwrite(str(folder / "sub" / "b.jpg"), astronaut_bgr)
    (folder / "readme.txt").write_text("ignored: not an image extension")
    out = tmp_path / "out"
    events = list(predict_paths([folder], classifier, detector=detector, out_dir=out))
    done = [e for e in events if isinstance(e, InputDone)]
    assert [Path(e.path).relative_to(folder).as_posix() for e in done] == ["a.png", "sub/b.jpg"]
    assert not [e for e in events if isinstance(e, InputProblem)]
    for rel in ("a.png", "sub/b.jpg"):
        annotated = cv2.imread(str(out / rel))
        assert annotated.shape == astronaut_bgr.shape
    # The box was drawn: the annotated lossless PNG differs from the photo, around the face only.
    diff = np.abs(cv2.imread(str(out / "a.png")).astype(int) - astronaut_bgr.astype(int)).sum(-1) > 0
    ys, xs = np.nonzero(diff)
    assert diff.any() and xs.min() > 100 and xs.max() < 350 and ys.max() < 250
    lines = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert [Path(d["path"]).name for d in lines] == ["a.png", "b.jpg"]


def test_out_inside_or_equal_to_the_input_folder(tmp_path, astronaut_bgr, classifier, detector):
    folder = tmp_path / "photos"
    folder.mkdir()
    cv2.imwrite(str(folder / "a.png"), astronaut_bgr)
    list(predict_paths([folder], classifier, detector=detector, out_dir=folder / "annotated"))
    # A second run does not read the first run's outputs back as inputs.
    events = list(predict_paths([folder], classifier, detector=detector, out_dir=folder / "annotated"))
    assert [Path(e.path).name for e in events if isinstance(e, InputDone)] == ["a.png"]
    # --out the input folder itself: a user's folder, refused unless overwrite (issue 26); even then
    # the photo is never overwritten.
    with pytest.raises(FertoolError, match="a folder fertool did not write"):
        list(predict_paths([folder / "a.png"], classifier, detector=detector, out_dir=folder))
    list(predict_paths([folder / "a.png"], classifier, detector=detector, out_dir=folder, overwrite=True))
    np.testing.assert_array_equal(cv2.imread(str(folder / "a.png")), astronaut_bgr)
    assert (folder / "a.annotated.png").is_file()


# --------------------------------------------------------------------------- video


def _write_video(path: Path, astronaut_bgr: np.ndarray, n: int = 9, blank_from: int = 6) -> None:
    """256x256 frames: the astronaut sliding right by 2 px per frame, then grey frames."""
    small = cv2.resize(astronaut_bgr, (256, 256), interpolation=cv2.INTER_AREA)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (256, 256))
    assert writer.isOpened()
    for i in range(n):
        writer.write(np.roll(small, 2 * i, axis=1) if i < blank_from else np.full_like(small, 90))
    writer.release()


def test_video_every_nth_frame_with_annotated_output(tmp_path, astronaut_bgr, classifier, detector):
    video = tmp_path / "clip.avi"
    _write_video(video, astronaut_bgr)
    out = tmp_path / "out"
    events = list(predict_paths([video], classifier, detector=detector, every=4, out_dir=out))
    faces = [e for e in events if isinstance(e, FaceResult)]
    (done,) = [e for e in events if isinstance(e, InputDone)]
    assert done.kind == "video" and done.frames == 3  # frames 0, 4, 8 searched
    assert {r.frame for r in faces} == {0, 4}  # frame 8 is blank
    for r in faces:
        if r.face == 0:
            _assert_astronaut_face(F.Box(r.box.x - 2 * r.frame, r.box.y, r.box.w, r.box.h), scale=0.5)
    assert done.faces == len(faces)
    cap = cv2.VideoCapture(str(out / "clip.mp4"))
    assert cap.isOpened() and int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 9
    cap.release()


def test_video_is_streamed_frame_by_frame(tmp_path, astronaut_bgr, classifier, detector, monkeypatch):
    """Results of early frames come out before later frames are read (batch of one face)."""
    video = tmp_path / "clip.mp4"
    _write_video(video, astronaut_bgr, n=7, blank_from=7)
    reads: list[int] = []
    real = cv2.VideoCapture

    class Counting:
        def __init__(self, *a):
            self.cap = real(*a)

        def read(self):
            reads.append(1)
            return self.cap.read()

        def grab(self):
            reads.append(1)
            return self.cap.grab()

        def __getattr__(self, name):
            return getattr(self.cap, name)

    monkeypatch.setattr(cv2, "VideoCapture", Counting)
    clf = FaceClassifier(classifier.model, size=SIZE, batch_size=1)
    seen = []
    for event in predict_paths([video], clf, detector=detector, every=3):
        if isinstance(event, FaceResult):
            seen.append((event.frame, len(reads)))
    assert seen and seen[0][0] == 0 and seen[0][1] < 7
    assert all(frames_read <= frame + 3 for frame, frames_read in seen)


def test_unreadable_video_and_video_without_faces(tmp_path, classifier, detector, capfd):
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 64)
    blank = tmp_path / "blank.avi"
    writer = cv2.VideoWriter(str(blank), cv2.VideoWriter_fourcc(*"mp4v"), 5.0, (64, 48))
    for _ in range(4):
        writer.write(np.full((48, 64, 3), 30, np.uint8))
    writer.release()
    out = tmp_path / "out"
    events = list(predict_paths([broken, blank], classifier, detector=detector, every=1, out_dir=out))
    problems = [e for e in events if isinstance(e, InputProblem)]
    assert [Path(p.path).name for p in problems] == ["broken.mp4", "blank.avi"]
    assert "no face found in any of the 4 searched frames" in problems[1].message
    assert not (out / "blank.mp4").exists() and not [
        p for p in out.glob(".*") if p.name != ".fertool-output.json"
    ]  # no temp files left
    assert "moov atom" not in capfd.readouterr().err  # FFmpeg's own log lines silenced (issue 26)


# --------------------------------------------------------------------------- CLI


def test_cli_json_lines_and_exit_codes(cli_runner, tmp_path, photo, ckpt_path):
    from fertool.cli import app

    ok = cli_runner.invoke(app, ["predict", str(photo), "--checkpoint", str(ckpt_path), "--json", "-q"])
    assert ok.exit_code == 0, ok.output
    (line,) = ok.stdout.splitlines()
    record = json.loads(line)
    assert record["path"] == str(photo) and sum(record["probs"].values()) == pytest.approx(1.0, abs=1e-5)

    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    bad = cli_runner.invoke(
        app, ["predict", str(text), str(photo), str(tmp_path / "nope"), "-c", str(ckpt_path), "--json", "-q"]
    )
    assert bad.exit_code == 1
    assert [json.loads(x)["path"] for x in bad.stdout.splitlines()] == [str(photo)]
    errors = [x for x in bad.stderr.splitlines() if x.startswith("error:")]
    assert len(errors) == 2 and "notes.jpg" in errors[0] and "nope" in errors[1]


def _opencv_has_gui() -> bool:
    info = cv2.getBuildInformation()
    gui = info.split("GUI:", 1)[1].splitlines()[0].strip() if "GUI:" in info else ""
    return gui not in ("", "NONE")


def test_cli_table_usage_and_webcam_without_display(cli_runner, photo, ckpt_path, monkeypatch):
    from fertool.cli import app

    table = cli_runner.invoke(app, ["predict", str(photo), "-c", str(ckpt_path), "-q"])
    assert table.exit_code == 0 and "Faces" in table.stdout
    assert sum(name in table.stdout for name in CLASS_NAMES) == 1  # the one face's label
    usage = cli_runner.invoke(app, ["predict", "-c", str(ckpt_path)])
    assert usage.exit_code == 2
    helped = cli_runner.invoke(app, ["predict", "--help"])
    assert "Exit codes" in helped.stdout
    if _opencv_has_gui():
        pytest.skip("this OpenCV has a GUI backend: the no-display message is not testable here")
    monkeypatch.setenv("DISPLAY", ":0")  # even with a DISPLAY, headless OpenCV has no GUI
    cam = cli_runner.invoke(app, ["predict", "--webcam", "0", "-c", str(ckpt_path)])
    assert cam.exit_code == 1
    assert "no display/GUI available: --webcam needs a desktop session with opencv-python (not -headless)" in cam.stderr


def test_predict_warns_when_the_model_never_saw_a_real_face(cli_runner, tmp_path, photo, ckpt_path):
    from fertool.checkpoint import load_checkpoint
    from fertool.cli import app

    ckpt = load_checkpoint(ckpt_path)
    synthetic = tmp_path / "synthetic.pt"
    record = {"kind": "synthetic sample", "source": "sample.csv", "sha256": "0" * 64, "rows": 28}
    save_checkpoint(synthetic, {**ckpt, "extra": {**ckpt["extra"], "data": {"provenance": record}}})
    warned = cli_runner.invoke(app, ["predict", str(photo), "-c", str(synthetic), "--json", "-q"])
    assert warned.exit_code == 0, warned.output
    assert "never seen a real face" in warned.stderr
    assert json.loads(warned.stdout.splitlines()[0])["label"] in CLASS_NAMES  # the results are still given
    plain = cli_runner.invoke(app, ["predict", str(photo), "-c", str(ckpt_path), "--json", "-q"])
    assert "real face" not in plain.stderr


@pytest.mark.skipif(not bf16_supported("cpu"), reason="this CPU has no native bf16")
def test_cli_bf16_rechecks_close_calls_and_says_how_many(cli_runner, photo, ckpt_path):
    from fertool.cli import app

    fp32 = cli_runner.invoke(app, ["predict", str(photo), "-c", str(ckpt_path), "--json", "-q"])
    # A margin of 10 (x the largest |logit|) makes every face a close call: the bf16 run then
    # reports the float32 probabilities and says it recomputed the one face.
    checked = cli_runner.invoke(
        app,
        [
            "predict",
            str(photo),
            "-c",
            str(ckpt_path),
            "--json",
            "--engine",
            "torch",
            "--precision",
            "bf16",
            "--recheck-margin",
            "10",
        ],
    )
    assert checked.exit_code == 0, checked.output
    want, got = (json.loads(r.stdout.splitlines()[0])["probs"] for r in (fp32, checked))
    assert got == pytest.approx(want, abs=1e-5)
    assert "bf16: 1 of 1 face images were close calls, recomputed in fp32" in checked.stderr
    plain = cli_runner.invoke(
        app,
        [
            "predict",
            str(photo),
            "-c",
            str(ckpt_path),
            "--json",
            "--engine",
            "torch",
            "--precision",
            "bf16",
            "--recheck-margin",
            "0",
        ],
    )
    assert plain.exit_code == 0 and "close calls" not in plain.stderr
    assert json.loads(plain.stdout.splitlines()[0])["probs"] != want  # it did run in bf16
    bad = cli_runner.invoke(app, ["predict", str(photo), "-c", str(ckpt_path), "--recheck-margin", "-1"])
    assert bad.exit_code == 2 and "--recheck-margin" in bad.stderr
