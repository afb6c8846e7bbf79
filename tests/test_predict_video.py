"""fertool predict on real faces and videos: the bundled BlazeFace detector and the detector
choice, alignment, face tracking across frames, per-frame CSV tables, plots and summaries.

Faces are real photographs no one here drew: scikit-image's astronaut() and lfw_subset()
(100 LFW faces, 100 non-faces, 25x25), composed into frames and short videos."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from fertool import CLASS_NAMES
from fertool.artifacts import cache_dir, cached_path
from fertool.cli import app
from fertool.deploy import faces as F
from fertool.deploy.predict import (
    FaceClassifier,
    FaceResult,
    InputDone,
    InputProblem,
    face_alignment,
    predict_paths,
)
from fertool.deploy.tracking import FrameTable, Smoother, Tally, Tracker, read_table
from fertool.errors import FertoolError

from .test_predict import SIZE, _assert_astronaut_face, make_tiny_checkpoint

skimage_data = pytest.importorskip("skimage.data", reason="scikit-image ships the astronaut and LFW photographs")

#: lfw_subset() face that BlazeFace finds with the highest worst-case score when pasted at 75 px
#: beside the astronaut (measured over x positions 230-275: >= 0.87).
LFW_FACE = 80
FPS = 10.0


@pytest.fixture(scope="module")
def astronaut_bgr() -> np.ndarray:
    return cv2.cvtColor(skimage_data.astronaut(), cv2.COLOR_RGB2BGR)


@pytest.fixture(scope="module")
def lfw() -> np.ndarray:
    return (skimage_data.lfw_subset() * 255).round().astype(np.uint8)  # (200, 25, 25): faces, then non-faces


@pytest.fixture(scope="module")
def blazeface():
    return F.load_detector("blazeface")


@pytest.fixture(scope="module")
def ckpt_path(tmp_path_factory) -> Path:
    return make_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt")


@pytest.fixture(scope="module")
def classifier(ckpt_path) -> FaceClassifier:
    return FaceClassifier.from_checkpoint(ckpt_path, batch_size=8)


def _rotate(image: np.ndarray, degrees: float) -> np.ndarray:
    h, w = image.shape[:2]
    m = cv2.getRotationMatrix2D((w / 2, h / 2), degrees, 1.0)
    return cv2.warpAffine(image, m, (w, h), borderMode=cv2.BORDER_REPLICATE)


# --------------------------------------------------------------------------- detection


def test_blazeface_finds_the_astronaut_with_confidence_and_eye_landmarks(astronaut_bgr, blazeface):
    (box,) = blazeface.detect(astronaut_bgr)
    _assert_astronaut_face(box)
    assert box.score > 0.9
    assert len(box.landmarks) == 6
    (rx, ry), (lx, ly) = box.landmarks[:2]
    # her right eye is on the image's left; both eyes in the upper half of the box
    assert box.x < rx < lx < box.x + box.w and box.y < ry < box.y + box.h / 2 and box.y < ly < box.y + box.h / 2
    assert abs(F.eye_angle(box)) < 10  # the photo is nearly upright


def test_blazeface_on_the_lfw_subset_finds_faces_and_not_non_faces(lfw, blazeface):
    """LFW's 25x25 crops are cut at the face's edge: the detector sees each one on a grey border."""

    def found(im):
        framed = cv2.copyMakeBorder(im, 25, 25, 25, 25, cv2.BORDER_CONSTANT, value=128)
        return len(blazeface.detect(cv2.cvtColor(framed, cv2.COLOR_GRAY2BGR))) > 0

    faces = sum(found(im) for im in lfw[:100])
    non_faces = sum(found(im) for im in lfw[100:])
    assert faces >= 85, faces  # measured 94
    assert non_faces <= 2, non_faces  # measured 0


def test_threshold_and_minimum_face_size(astronaut_bgr):
    assert len(F.load_detector("blazeface", score_threshold=0.5).detect(astronaut_bgr)) == 1
    assert F.load_detector("blazeface", score_threshold=0.99).detect(astronaut_bgr) == []  # her face scores 0.94
    assert len(F.load_detector("blazeface", min_face=90).detect(astronaut_bgr)) == 1  # her box is ~105 px
    assert F.load_detector("blazeface", min_face=150).detect(astronaut_bgr) == []
    if F.haar_available():
        assert F.load_detector("haar", min_face=150).detect(astronaut_bgr) == []
    with pytest.raises(FertoolError, match="score_threshold"):
        F.load_detector("blazeface", score_threshold=1.5)


def test_two_faces_in_one_frame(astronaut_bgr, lfw, blazeface):
    frame = _frame(astronaut_bgr, lfw, 10, 250)
    boxes = blazeface.detect(frame)
    assert len(boxes) == 2
    left, right = sorted(b.x + b.w / 2 for b in boxes)
    assert 10 < left < 106 and 250 < right < 325  # the astronaut's 96-px tile, the LFW face's 75-px tile


def test_auto_takes_the_cached_yunet_and_falls_back_with_a_note(tmp_path, monkeypatch, astronaut_bgr):
    monkeypatch.setenv("FERTOOL_HOME", str(tmp_path))
    assert cache_dir() == tmp_path and cached_path("yunet") is None
    d = F.load_detector("auto")
    assert d.name == "blazeface" and str(tmp_path / "yunet") in d.note
    with pytest.raises(FertoolError, match="YuNet face detector unavailable: the YuNet model is not in the cache"):
        F.load_detector("yunet")

    model = tmp_path / "yunet" / "face_detection_yunet_2023mar.onnx"
    model.parent.mkdir()
    model.write_bytes(b"not an onnx model")  # a damaged download
    assert cached_path("yunet") == model
    d = F.load_detector("auto")
    assert d.name == "blazeface" and "could not be loaded" in d.note and len(d.detect(astronaut_bgr)) == 1
    with pytest.raises(FertoolError, match="cannot load as a YuNet face detector"):
        F.load_detector("yunet")

    made = []

    class FakeYuNet:  # the real model cannot be downloaded here: check that auto picks it
        name = "yunet"

        def __init__(self, path, **kwargs):
            made.append((Path(path), kwargs))

    monkeypatch.setattr(F, "YuNetDetector", FakeYuNet)
    d = F.load_detector("auto", score_threshold=0.8, min_face=20)
    assert isinstance(d, FakeYuNet) and d.note is None
    assert made == [(model, {"score_threshold": 0.8, "min_face": 20})]


def test_cli_says_which_detector_ran_and_why(cli_runner, tmp_path, monkeypatch, astronaut_bgr, ckpt_path):
    monkeypatch.setenv("FERTOOL_HOME", str(tmp_path / "home"))
    photo = tmp_path / "astronaut.png"
    cv2.imwrite(str(photo), astronaut_bgr)
    result = cli_runner.invoke(app, ["predict", str(photo), "-c", str(ckpt_path), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "YuNet model is not in the cache" in result.stderr and "using the bundled BlazeFace" in result.stderr
    assert "face detector: blazeface (" in result.stderr and "aligned eyes-level" in result.stderr
    rows = list(csv.reader((tmp_path / "out" / "predictions.csv").read_text().splitlines()))
    assert rows[0] == ["video", "frame", "time_s", "face_id", "x", "y", "w", "h", "label"] + [
        f"p_{c}" for c in CLASS_NAMES
    ]
    assert len(rows) == 2 and rows[1][0] == str(photo) and rows[1][1] == "" and rows[1][3] == "0"
    assert sum(float(v) for v in rows[1][9:]) == pytest.approx(1.0, abs=1e-4)
    haar = cli_runner.invoke(app, ["predict", str(photo), "-c", str(ckpt_path), "--detector", "haar", "--no-align"])
    if F.haar_available():
        assert haar.exit_code == 0 and "face detector: haar" in haar.stderr and "note:" not in haar.stderr


# --------------------------------------------------------------------------- alignment


def test_aligned_crop_levels_the_eyes_of_a_tilted_face(astronaut_bgr, blazeface):
    upright = blazeface.detect(astronaut_bgr)[0]
    reference = F.crop_face(astronaut_bgr, upright, 0.1, align=True)
    for degrees in (-25, 25):
        tilted = _rotate(astronaut_bgr, degrees)
        (box,) = blazeface.detect(tilted)
        assert abs(F.eye_angle(box) + degrees) < 6  # OpenCV turns counter-clockwise: the eye line tilts by -degrees
        m, _ = F.align_matrix(box, 0.1)
        eyes = np.c_[np.array(box.landmarks[:2]), np.ones(2)] @ m.T
        assert abs(eyes[0, 1] - eyes[1, 1]) < 0.5  # level after the transform
        aligned = F.crop_face(tilted, box, 0.1, align=True)
        plain = F.crop_face(tilted, box, 0.1, align=False)

        def diff(a):
            return np.abs(
                cv2.resize(a, (48, 48), interpolation=cv2.INTER_AREA).astype(float)
                - cv2.resize(reference, (48, 48), interpolation=cv2.INTER_AREA)
            ).mean()

        assert diff(aligned) < 0.8 * diff(plain), (degrees, diff(aligned), diff(plain))  # measured 0.55-0.61


def test_alignment_is_recorded_per_checkpoint_and_overridable(ckpt_path):
    assert face_alignment({}) is True
    assert face_alignment({"extra": {"predict": {"align": False}}}) is False
    assert FaceClassifier.from_checkpoint(ckpt_path).align is True
    assert FaceClassifier.from_checkpoint(ckpt_path, align=False).align is False


def test_predictions_use_the_aligned_crop(tmp_path, astronaut_bgr, classifier, blazeface):
    tilted = _rotate(astronaut_bgr, 20)
    path = tmp_path / "tilted.png"
    cv2.imwrite(str(path), tilted)
    (r,) = [e for e in predict_paths([path], classifier, detector=blazeface) if isinstance(e, FaceResult)]
    crop = F.crop_face(tilted, r.box, 0.1, align=True)
    prepared = F.prepare_faces([F.face_to_48(crop)], SIZE, **classifier.preparation)
    expected = classifier.classify(prepared)[0][0]
    np.testing.assert_allclose([r.probs[c] for c in CLASS_NAMES], expected, atol=1e-6)


# --------------------------------------------------------------------------- tracking units


def test_tracker_keeps_ids_through_short_misses_and_retires_them_after():
    t = Tracker(max_missed=3)
    a, b = F.Box(10, 10, 50, 50), F.Box(200, 10, 50, 50)
    assert t.update([a, b]) == [1, 2]
    assert t.update([F.Box(16, 10, 50, 50), F.Box(204, 12, 50, 50)]) == [1, 2]  # both moved a little
    assert t.update([F.Box(22, 10, 50, 50)]) == [1]  # b left
    assert t.update([F.Box(28, 10, 50, 50)]) == [1]
    assert t.update([F.Box(210, 14, 50, 50), F.Box(34, 10, 50, 50)]) == [2, 1]  # b back after 2 misses: same id
    assert t.update([]) == []  # a frame without faces
    assert t.update([F.Box(40, 10, 48, 48)]) == [1]
    for _ in range(4):  # b gone for more than max_missed searched frames: its id is retired
        t.update([F.Box(40, 10, 48, 48)])
    assert t.update([F.Box(210, 14, 50, 50), F.Box(40, 10, 48, 48)]) == [3, 1]
    # a fast move without overlap is still the same face when its centre stays close
    t2 = Tracker()
    assert t2.update([F.Box(0, 0, 40, 40)]) == [1]
    assert t2.update([F.Box(25, 0, 40, 40)]) == [1]
    assert t2.update([F.Box(300, 0, 40, 40)]) == [2]  # far away: someone else


def test_smoother_is_an_exponential_average_over_seconds():
    s = Smoother(tau=1.0)
    p0, p1 = np.array([1.0, 0.0]), np.array([0.0, 1.0])
    np.testing.assert_allclose(s(1, 0.0, p0), p0)
    k = np.exp(-0.5)
    np.testing.assert_allclose(s(1, 0.5, p1), k * p0 + (1 - k) * p1)
    np.testing.assert_allclose(s(2, 0.5, p1), p1)  # another track has its own history
    np.testing.assert_allclose(Smoother(0.0)(1, 3.0, p1), p1)


def test_frame_table_and_tally(tmp_path):
    table = FrameTable(tmp_path / "t.csv", ["a", "b"])
    table.add([("v.mp4", 0, 0.0, 1, F.Box(1, 2, 3, 4), "a", [0.75, 0.25])])
    table.add(
        [
            ("v.mp4", 2, 0.2, 1, F.Box(1, 2, 3, 4), "b", [0.25, 0.75]),
            ("v.mp4", 2, 0.2, 2, F.Box(5, 6, 7, 8), "a", [1.0, 0.0]),
        ]
    )
    table.close()
    lines = (tmp_path / "t.csv").read_text().splitlines()
    assert lines[0] == "video,frame,time_s,face_id,x,y,w,h,label,p_a,p_b"
    assert lines[2] == "v.mp4,2,0.200,1,1,2,3,4,b,0.250000,0.750000"
    classes, tracks = read_table(tmp_path / "t.csv")
    assert classes == ["a", "b"] and sorted(tracks) == [1, 2]
    np.testing.assert_allclose(tracks[1]["time_s"], [0.0, 0.2])
    tally = Tally()
    for face_id, t, label in [(1, 0.0, "a"), (1, 0.2, "b"), (1, 0.4, "b"), (2, 0.2, "a")]:
        tally.add(face_id, t, label)
    one, two = tally.summary(["a", "b"])
    assert one == {
        "face_id": 1,
        "frames": 3,
        "first_s": 0.0,
        "last_s": 0.4,
        "dominant": "b",
        "share": {"a": pytest.approx(1 / 3), "b": pytest.approx(2 / 3)},
    }
    assert two["dominant"] == "a" and two["share"] == {"a": 1.0, "b": 0.0}


# --------------------------------------------------------------------------- videos


def _frame(astronaut_bgr, lfw, ax: int | None, bx: int | None) -> np.ndarray:
    """A 360x240 grey frame with the astronaut's face (96 px) at x=ax and an LFW face (75 px) at x=bx."""
    frame = np.full((240, 360, 3), 120, np.uint8)
    if ax is not None:
        frame[60:156, ax : ax + 96] = cv2.resize(astronaut_bgr[40:200, 145:305], (96, 96), interpolation=cv2.INTER_AREA)
    if bx is not None:
        face = cv2.resize(lfw[LFW_FACE], (75, 75), interpolation=cv2.INTER_CUBIC)
        frame[80:155, bx : bx + 75] = cv2.cvtColor(face, cv2.COLOR_GRAY2BGR)
    return frame


#: (astronaut x, LFW face x) per frame: the astronaut moves right; the LFW face leaves at frame
#: 4, returns at frame 7 near where it was; frame 11 has no face.
SCRIPT = [
    (10, 250),
    (14, 252),
    (18, 254),
    (22, 256),
    (26, None),
    (30, None),
    (34, None),
    (38, 258),
    (42, 260),
    (46, 262),
    (50, 264),
    (None, None),
]


def _write_video(path: Path, astronaut_bgr, lfw, script=SCRIPT) -> None:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), FPS, (360, 240))
    assert writer.isOpened()
    for ax, bx in script:
        writer.write(_frame(astronaut_bgr, lfw, ax, bx))
    writer.release()


def test_video_faces_keep_their_ids_with_times_table_plots_and_summary(
    tmp_path, astronaut_bgr, lfw, classifier, blazeface
):
    video = tmp_path / "clip.avi"
    _write_video(video, astronaut_bgr, lfw)
    out = tmp_path / "out"
    events = list(predict_paths([video], classifier, detector=blazeface, every=1, out_dir=out))
    faces = [e for e in events if isinstance(e, FaceResult)]
    (done,) = [e for e in events if isinstance(e, InputDone)]
    per_frame = {}
    for r in faces:
        per_frame.setdefault(r.frame, []).append(r)
        assert r.time_s == pytest.approx(r.frame / FPS)
    assert sorted(per_frame) == list(range(11))  # frame 11 has no face
    ids = {frame: {("astronaut" if r.box.x < 150 else "lfw"): r.face_id for r in rs} for frame, rs in per_frame.items()}
    assert all(len(per_frame[f]) == (2 if SCRIPT[f][1] is not None else 1) for f in range(11)), ids
    assert {i["astronaut"] for i in ids.values()} == {1}
    assert {i["lfw"] for i in ids.values() if "lfw" in i} == {2}  # the same id before and after its absence

    table = out / "clip.csv"
    assert done.table == str(table)
    rows = list(csv.DictReader(table.read_text().splitlines()))
    assert len(rows) == len(faces) == done.faces == 19
    assert [(int(r["frame"]), float(r["time_s"]), int(r["face_id"])) for r in rows] == [
        (r.frame, round(r.time_s, 3), r.face_id) for r in faces
    ]
    assert {r["video"] for r in rows} == {str(video)}
    for row, r in zip(rows, faces):
        assert [int(row[k]) for k in "xywh"] == r.box.as_list() and row["label"] == r.label
        np.testing.assert_allclose(
            [float(row[f"p_{c}"]) for c in CLASS_NAMES], [r.probs[c] for c in CLASS_NAMES], atol=1e-6
        )

    assert done.plots == (str(out / "clip.face1.png"), str(out / "clip.face2.png"))
    for p in done.plots:
        image = cv2.imread(p)
        assert image is not None and image.shape[0] > 100
    summary = json.loads((out / "clip.summary.json").read_text())
    assert summary["fps"] == FPS and summary["frames"] == 12 and summary["searched"] == 12
    by_id = {f["face_id"]: f for f in summary["faces"]}
    assert by_id[1]["frames"] == 11 and by_id[2]["frames"] == 8
    assert by_id[2]["first_s"] == 0.0 and by_id[2]["last_s"] == pytest.approx(1.0)
    for f in summary["faces"]:
        labels = [r.label for r in faces if r.face_id == f["face_id"]]
        assert f["share"] == {c: pytest.approx(labels.count(c) / len(labels)) for c in CLASS_NAMES}
        assert f["share"][f["dominant"]] == max(f["share"].values())
    assert list(done.summary) == summary["faces"]
    assert done.frames_read == 12 and done.seconds > 0
    cap = cv2.VideoCapture(str(out / "clip.mp4"))
    assert cap.isOpened() and int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 12
    cap.release()


def test_video_smoothing_averages_each_track(tmp_path, astronaut_bgr, lfw, classifier, blazeface):
    video = tmp_path / "clip.avi"
    _write_video(video, astronaut_bgr, lfw, SCRIPT[:4])
    raw = [e for e in predict_paths([video], classifier, detector=blazeface, every=1) if isinstance(e, FaceResult)]
    smooth = [
        e
        for e in predict_paths([video], classifier, detector=blazeface, every=1, smooth=0.5)
        if isinstance(e, FaceResult)
    ]
    assert [(r.frame, r.face_id) for r in raw] == [(r.frame, r.face_id) for r in smooth]
    ema = Smoother(0.5)
    for r, s in zip(raw, smooth):
        expected = ema(r.face_id, r.time_s, np.array([r.probs[c] for c in CLASS_NAMES]))
        np.testing.assert_allclose([s.probs[c] for c in CLASS_NAMES], expected, atol=1e-9)
        assert s.smoothed and s.label == CLASS_NAMES[int(np.argmax(expected))]


def test_cli_video_prints_the_face_summary_and_throughput(cli_runner, tmp_path, astronaut_bgr, lfw, ckpt_path):
    video = tmp_path / "clip.avi"
    _write_video(video, astronaut_bgr, lfw, SCRIPT[:5])
    result = cli_runner.invoke(
        app,
        [
            "predict",
            str(video),
            "-c",
            str(ckpt_path),
            "--out",
            str(tmp_path / "out"),
            "--every",
            "1",
            "--detector",
            "blazeface",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "Faces in" in result.stdout and "dominant" in result.stdout
    assert "frames/s" in result.stderr and "faces/s" in result.stderr
    assert (tmp_path / "out" / "clip.csv").is_file() and (tmp_path / "out" / "clip.face2.png").is_file()


def test_killed_run_leaves_a_csv_of_complete_rows(tmp_path, astronaut_bgr, lfw, ckpt_path):
    """kill -9 in the middle of a long video: every line of the table is a whole row."""
    video = tmp_path / "long.avi"
    script = [(10 + (i % 40), 250 if i % 10 < 7 else None) for i in range(600)]
    _write_video(video, astronaut_bgr, lfw, script)
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fertool",
            "predict",
            str(video),
            "-c",
            str(ckpt_path),
            "--out",
            str(out),
            "--every",
            "1",
            "--batch-size",
            "1",
            "--detector",
            "blazeface",
            "--quiet",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    table = out / "long.csv"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if table.is_file() and table.read_text().count("\n") > 20:
                break
            assert proc.poll() is None, "the run ended before it could be killed"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    text = table.read_text()
    assert text.endswith("\n")
    rows = list(csv.reader(text.splitlines()))
    assert len(rows) > 20
    width = 9 + len(CLASS_NAMES)
    assert all(len(r) == width for r in rows)
    for r in rows[1:]:
        assert int(r[1]) >= 0 and float(r[2]) == pytest.approx(int(r[1]) / FPS, abs=1e-3) and r[8] in CLASS_NAMES
        assert sum(float(v) for v in r[9:]) == pytest.approx(1.0, abs=1e-4)
    assert not (out / "long.mp4").exists()  # the annotated video is only moved in place when done


def test_problems_still_reported(tmp_path, classifier, blazeface):
    video = tmp_path / "grey.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), FPS, (64, 64))
    for _ in range(3):
        writer.write(np.full((64, 64, 3), 90, np.uint8))
    writer.release()
    out = tmp_path / "out"
    (problem,) = list(predict_paths([video], classifier, detector=blazeface, out_dir=out, every=1))
    assert isinstance(problem, InputProblem) and "no face found" in problem.message
    assert not (out / "grey.csv").exists()  # no table for a video without faces
