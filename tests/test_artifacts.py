"""Named artefacts (fertool/artifacts.py, ``fertool download``): everything through a mirror
served by a loopback HTTP server (127.0.0.1 only, stopped by the fixture) that counts requests.

The failure cases (redirect, dropped connection, wrong checksum, 404, HTML page, Git LFS
pointer, no server) use the small entries (yunet, resnet34-imagenet); one module-scoped fetch
of the full-size lhc-net fixture serves the commands that take ``-c lhc-net``.
"""

from __future__ import annotations

import gzip
import hashlib
import http.server
import lzma
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest

from fertool import artifacts
from fertool.cli import app
from tests.conftest import reference_file

DATA = ".data-00000-of-00001"


class _Server:
    """Routes: URL path -> ("file", Path | bytes) | ("redirect", target) | ("drop", bytes) (sends half, once)
    | ("status", code) | ("html",)."""

    def __init__(self) -> None:
        self.routes: dict[str, tuple] = {}
        self.requests: list[str] = []
        self.dropped: set[str] = set()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):  # noqa: N802
                server.requests.append(self.path)
                path = self.path.split("?")[0]
                route = server.routes.get(path, ("status", 404))
                kind = route[0]
                if kind == "redirect":
                    self.send_response(302)
                    self.send_header("Location", route[1])
                    self.end_headers()
                elif kind == "status":
                    self.send_error(route[1])
                elif kind == "html":
                    body = b"<!DOCTYPE html><html><body>Sign in to download</body></html>"
                    self._send(body, "text/html")
                elif kind == "drop" and path not in server.dropped:
                    server.dropped.add(path)
                    body = route[1]
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                else:
                    body = route[1]
                    if isinstance(body, Path):
                        self.send_response(200)
                        self.send_header("Content-Length", str(body.stat().st_size))
                        self.end_headers()
                        with open(body, "rb") as fh:
                            shutil.copyfileobj(fh, self.wfile, 1 << 20)
                    else:
                        self._send(body, "application/octet-stream")

            def _send(self, body: bytes, ctype: str) -> None:
                self.send_response(200)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.timeout = 10
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(10)


@pytest.fixture
def server():
    s = _Server()
    yield s
    s.stop()


@pytest.fixture
def home(tmp_path, monkeypatch, server):
    monkeypatch.setenv("FERTOOL_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("FERTOOL_MIRROR", server.url + "/mirror")
    monkeypatch.setattr(artifacts, "RETRIES", 0)
    return tmp_path / "home"


def _onnx_bytes() -> bytes:
    """A small valid ONNX model (an Identity), standing in for YuNet."""
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y])
    return helper.make_model(graph).SerializeToString()


YUNET = "/mirror/yunet/face_detection_yunet_2023mar.onnx"


def _nothing_cached(home: Path, name: str) -> None:
    assert artifacts.cached_path(name) is None
    folder = home / name
    files = [p for p in folder.rglob("*") if p.is_file()] if folder.exists() else []
    assert files == [], files


# --------------------------------------------------------------------------- places


def test_cache_dir_follows_fertool_home_else_platformdirs(monkeypatch, tmp_path):
    import platformdirs

    monkeypatch.setenv("FERTOOL_HOME", str(tmp_path))
    assert artifacts.cache_dir() == tmp_path
    monkeypatch.delenv("FERTOOL_HOME")
    assert artifacts.cache_dir() == Path(platformdirs.user_cache_dir("fertool"))


def test_mirror_from_config_file_replaces_every_url(monkeypatch, tmp_path):
    monkeypatch.setenv("FERTOOL_HOME", str(tmp_path))
    monkeypatch.delenv("FERTOOL_MIRROR", raising=False)
    e = artifacts.entry("lhc-net")
    assert artifacts.mirror_url("lhc-net", e.sources[0]) == e.sources[0].urls
    (tmp_path / "config.yaml").write_text("mirror: http://mirror.example/fertool/\n")
    assert [artifacts.mirror_url("lhc-net", s) for s in e.sources] == [
        (f"http://mirror.example/fertool/lhc-net/LHC_Net/{n}",)
        for n in ("checkpoint", "LHC_Net.data-00000-of-00001", "LHC_Net.index")
    ]


def test_registry_urls_are_the_authors_and_publishers():
    """The sources are those of the authors' Download_Models.py / Download_Data.py and of the publishers."""
    urls = {s.path: s.urls[0] for s in artifacts.entry("lhc-net").sources}
    assert urls["LHC_Net/LHC_Net.index"] == "https://www.dropbox.com/s/tq561bgbqxdf5jh/LHC_Net.index?dl=1"
    urls = {s.path: s.urls[0] for s in artifacts.entry("fer2013").sources}
    assert urls["data_test.csv"] == "https://www.dropbox.com/s/py8um99gnjjwcub/data_test.csv?dl=1"
    (src,) = artifacts.entry("resnet34-imagenet").sources
    assert src.known_hash == "md5:8caaa0ad39d927cb8ba5385bf945d582"
    (src,) = artifacts.entry("yunet").sources
    assert not any("raw.githubusercontent.com" in u for u in src.urls)  # that host serves the LFS pointer


# --------------------------------------------------------------------------- download outcomes


def test_redirect_then_cache_without_a_request(home, server):
    body = _onnx_bytes()
    server.routes[YUNET] = ("redirect", "/content/yunet.onnx?dl=1")  # like Dropbox's ?dl=1 links
    server.routes["/content/yunet.onnx"] = ("file", body)
    path = artifacts.fetch("yunet")
    assert path == home / "yunet" / "face_detection_yunet_2023mar.onnx"
    assert path.read_bytes() == body
    assert artifacts.cached_path("yunet") == path
    record = artifacts.fetched_record("yunet")
    assert record["files"][0]["sha256"] == hashlib.sha256(body).hexdigest()
    before = len(server.requests)
    assert artifacts.fetch("yunet") == path
    assert len(server.requests) == before  # the second call is answered by the cache


@pytest.mark.parametrize(
    "route, message",
    [
        (("status", 404), "HTTP 404"),
        (("html",), "HTML page"),
        (("file", b"version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 232589\n"), "Git LFS pointer"),
        (("file", b"\x08\x07garbage that is not protobuf" * 3), "not an ONNX model"),
    ],
)
def test_failures_are_one_line_and_cache_nothing(home, server, route, message):
    server.routes[YUNET] = route
    with pytest.raises(artifacts.DownloadError) as info:
        artifacts.fetch("yunet")
    text = str(info.value)
    assert message in text and len(text.splitlines()) == 1
    assert server.url + YUNET in text and str(home / "yunet") in text and "nothing cached in" in text
    _nothing_cached(home, "yunet")


def test_dropped_connection_caches_nothing_and_the_next_call_restarts(home, server):
    body = _onnx_bytes() * 1  # small; half of it is sent, then the connection closes
    server.routes[YUNET] = ("drop", body)
    with pytest.raises(artifacts.DownloadError, match="cannot download|download failed"):
        artifacts.fetch("yunet")
    _nothing_cached(home, "yunet")
    assert artifacts.fetch("yunet").read_bytes() == body  # the server now sends it whole


def test_dropped_connection_is_retried(home, server, monkeypatch):
    monkeypatch.setattr(artifacts, "RETRIES", 1)
    body = _onnx_bytes()
    server.routes[YUNET] = ("drop", body)
    assert artifacts.fetch("yunet").read_bytes() == body
    assert server.requests.count(YUNET) == 2


@pytest.fixture(scope="module")
def keras_h5(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("keras") / "resnet34_imagenet_1000_no_top.h5"
    with gzip.open(reference_file("keras_resnet34_notop.h5.gz"), "rb") as src, open(out, "wb") as dst:
        shutil.copyfileobj(src, dst)
    return out


def test_wrong_checksum_caches_nothing(home, server, keras_h5):
    """The fixture .h5 is not the published file: its md5 differs from the registry's."""
    server.routes["/mirror/resnet34-imagenet/resnet34_imagenet_1000_no_top.h5"] = ("file", keras_h5)
    with pytest.raises(artifacts.DownloadError, match="checksum mismatch: expected md5:8caaa0ad") as info:
        artifacts.fetch("resnet34-imagenet")
    assert hashlib.md5(keras_h5.read_bytes()).hexdigest() in str(info.value)
    _nothing_cached(home, "resnet34-imagenet")


def test_resnet34_imagenet_is_imported_and_model_pretrained_imagenet_resolves(home, server, keras_h5, monkeypatch):
    import dataclasses

    import torch

    from fertool.checkpoint import load_checkpoint
    from fertool.models.keras import import_keras

    md5 = hashlib.md5(keras_h5.read_bytes()).hexdigest()
    e = artifacts.REGISTRY["resnet34-imagenet"]
    src = dataclasses.replace(e.sources[0], known_hash=f"md5:{md5}")
    monkeypatch.setitem(artifacts.REGISTRY, "resnet34-imagenet", dataclasses.replace(e, sources=(src,)))
    server.routes["/mirror/resnet34-imagenet/resnet34_imagenet_1000_no_top.h5"] = ("file", keras_h5)
    notes: list[str] = []
    path = artifacts.fetch("resnet34-imagenet", note=notes.append)
    assert path == home / "resnet34-imagenet" / "resnet34v2-imagenet.pt"
    assert "fetching resnet34-imagenet" in notes[0] and server.url in notes[0]
    ckpt, direct = load_checkpoint(path), import_keras(keras_h5)
    assert ckpt["arch"] == direct["arch"]
    for key, value in direct["state_dict"].items():
        if not key.startswith("head."):
            assert torch.equal(ckpt["state_dict"][key], value), key

    from fertool.engine.start import _pretrained_checkpoint
    from fertool.recipe import load_recipe

    recipe = load_recipe({"model": {"pretrained": "imagenet"}})
    logs: list[str] = []
    start = _pretrained_checkpoint(recipe, "backbone", 0, logs.append, tuple(direct["class_names"]))
    assert any(str(path) in line for line in logs)
    key = next(k for k in direct["state_dict"] if k.endswith("weight") and not k.startswith("head."))
    assert torch.equal(start["state_dict"][key], direct["state_dict"][key])


def test_cli_offline_is_one_error_line(tmp_path, monkeypatch, cli_runner):
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("FERTOOL_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("FERTOOL_MIRROR", f"http://127.0.0.1:{port}")
    monkeypatch.setattr(artifacts, "RETRIES", 0)
    result = cli_runner.invoke(app, ["download", "lhc-net"])
    assert result.exit_code == 1
    (line,) = [x for x in result.output.splitlines() if x.strip()][-1:]
    assert line.startswith("error: ") and f"http://127.0.0.1:{port}/lhc-net/LHC_Net/checkpoint: cannot download" in line
    assert "Connection refused" in line and f"nothing cached in {tmp_path / 'home' / 'lhc-net'}" in line
    assert "fertool import DIR" in line
    assert result.output.count("error:") == 1


def test_cli_list_and_download(home, server, cli_runner):
    server.routes[YUNET] = ("file", _onnx_bytes())
    result = cli_runner.invoke(app, ["download", "--list"])
    assert result.exit_code == 0, result.output
    for name in artifacts.REGISTRY:
        assert f"{name}: " in result.output
    assert "yunet: about 0.3 MB, not cached" in result.output and "Kaggle" in result.output
    result = cli_runner.invoke(app, ["download", "yunet"])
    assert result.exit_code == 0, result.output
    assert f"yunet: {home / 'yunet' / 'face_detection_yunet_2023mar.onnx'}" in result.output
    assert "sha256 " + hashlib.sha256(_onnx_bytes()).hexdigest() in result.output
    assert "cached: " in cli_runner.invoke(app, ["download", "--list"]).output
    result = cli_runner.invoke(app, ["download", "nope"])
    assert result.exit_code == 1 and "unknown artefact 'nope'" in result.output


# --------------------------------------------------------------------------- the authors' files


def _split_text(labels, pixels) -> str:
    header = ";".join(["emotion", "Usage"] + [f"pixel_{i}" for i in range(2304)])
    rows = [";".join([str(lbl), "x"] + [str(v) for v in px.ravel()]) for lbl, px in zip(labels, pixels)]
    return header + "\n" + "\n".join(rows) + "\n"


def write_split_folder(folder: Path, n: int = 3, seed: int = 0) -> dict:
    """The authors' three split files with n rows each; returns {file: (labels, pixels)}."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for name in ("data_train.csv", "data_val.csv", "data_test.csv"):
        labels = rng.integers(0, 7, n)
        pixels = rng.integers(0, 256, (n, 48, 48))
        (folder / name).write_text(_split_text(labels, pixels))
        out[name] = (labels, pixels)
    return out


#: The authors' models at full size (32M parameters): the fetched and imported files take
#: 1.2 GB of temporary space, so these tests run with the slow ones (``pytest -m slow``).
FULL_SIZE = pytest.mark.slow


@pytest.fixture(scope="module")
def tf_files(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tf")
    for folder, name in (("LHC_Net", "LHC_Net"), ("LHC_NetC", "LHC_Net_Controller")):
        index = reference_file(f"tf_checkpoints/{folder}/{name}.index")
        (root / folder).mkdir()
        for f in (index, index.with_name("checkpoint")):
            shutil.copyfile(f, root / folder / f.name)
        with (
            lzma.open(reference_file(f"tf_checkpoints/{folder}/{name}{DATA}.xz")) as src,
            open(root / folder / f"{name}{DATA}", "wb") as dst,
        ):
            shutil.copyfileobj(src, dst, 1 << 22)
    return root


@pytest.fixture(scope="module")
def lhc_home(tmp_path_factory, tf_files):
    """lhc-net fetched once through a mirror whose every file is a Dropbox-like redirect."""
    home = tmp_path_factory.mktemp("lhc-home")
    s = _Server()
    for name in ("checkpoint", "LHC_Net.index", f"LHC_Net{DATA}"):
        s.routes[f"/mirror/lhc-net/LHC_Net/{name}"] = ("redirect", f"/s/key/{name}?dl=1")
        s.routes[f"/s/key/{name}"] = ("file", tf_files / "LHC_Net" / name)
    for name in ("checkpoint", "LHC_Net_Controller.index", f"LHC_Net_Controller{DATA}"):
        s.routes[f"/mirror/lhc-netc/LHC_NetC/{name}"] = ("file", tf_files / "LHC_NetC" / name)
    data = write_split_folder(home.parent / "served-fer2013", n=2, seed=5)
    for name in data:
        s.routes[f"/mirror/fer2013/{name}"] = ("file", home.parent / "served-fer2013" / name)
    mp = pytest.MonkeyPatch()
    mp.setenv("FERTOOL_HOME", str(home))
    mp.setenv("FERTOOL_MIRROR", s.url + "/mirror")
    try:
        yield home, s
    finally:
        mp.undo()
        s.stop()


@pytest.fixture
def lhc_env(lhc_home, monkeypatch):
    home, s = lhc_home
    monkeypatch.setenv("FERTOOL_HOME", str(home))
    monkeypatch.setenv("FERTOOL_MIRROR", s.url + "/mirror")
    return home, s


@FULL_SIZE
def test_download_lhc_net_imports_and_records_sha256(lhc_env, tf_files, cli_runner):
    home, s = lhc_env
    result = cli_runner.invoke(app, ["download", "lhc-net"])
    assert result.exit_code == 0, result.output
    product = home / "lhc-net" / "lhc-net.pt"
    assert f"lhc-net: {product}" in result.output
    # the sha256 documented with the reference fixture (tests/test_tf_checkpoint.py), shown and recorded
    from tests.test_tf_checkpoint import DATA_SHA256

    assert f"LHC_Net/LHC_Net{DATA}: 388,927,572 bytes, sha256 {DATA_SHA256['LHC_Net']}" in result.output
    assert (tf_files / "LHC_Net" / f"LHC_Net{DATA}").stat().st_size == 388_927_572
    from fertool.checkpoint import load_checkpoint

    ckpt = load_checkpoint(product)
    assert ckpt["arch"] == "lhc_net"
    assert {f["path"] for f in ckpt["extra"]["artifact"]["files"]} == {
        "LHC_Net/checkpoint",
        "LHC_Net/LHC_Net.index",
        f"LHC_Net/LHC_Net{DATA}",
    }
    assert not (home / "lhc-net" / ".partial").exists()
    before = len(s.requests)
    again = cli_runner.invoke(app, ["download", "lhc-net"])
    assert again.exit_code == 0 and "(already cached)" in again.output
    assert len(s.requests) == before


@FULL_SIZE
def test_commands_take_lhc_net_by_name(lhc_env, tmp_path, cli_runner):
    import json

    home, _ = lhc_env
    assert cli_runner.invoke(app, ["download", "lhc-net", "-q"]).exit_code == 0
    info = cli_runner.invoke(app, ["info", "-c", "lhc-net"])
    assert info.exit_code == 0, info.output
    assert "LHC" in info.output

    cv2 = pytest.importorskip("cv2")
    skdata = pytest.importorskip("skimage.data")
    photo = tmp_path / "astronaut.jpg"
    cv2.imwrite(str(photo), cv2.cvtColor(skdata.astronaut(), cv2.COLOR_RGB2BGR))
    pred = cli_runner.invoke(app, ["predict", str(photo), "-c", "lhc-net", "--json", "-q"])
    assert pred.exit_code == 0, pred.output
    lines = [json.loads(x) for x in pred.stdout.splitlines() if x.startswith("{")]
    assert lines, pred.output

    folder = tmp_path / "split"
    write_split_folder(folder, n=2)
    ev = cli_runner.invoke(
        app,
        ["evaluate", "-c", "lhc-net", "--csv", str(folder), "--json", "-o", str(tmp_path / "ev"), "--engine", "torch"],
    )
    assert ev.exit_code == 0, ev.output
    metrics = json.loads(ev.stdout[ev.stdout.index("{") :])
    assert metrics["n"] == 2 and metrics["checkpoint"] == str(home / "lhc-net" / "lhc-net.pt")

    ex = cli_runner.invoke(
        app,
        [
            "export",
            "-c",
            "lhc-net",
            "-f",
            "torchscript",
            "-o",
            str(tmp_path / "m.pt"),
            "--samples",
            "1",
            "--batch",
            "1",
            "-q",
        ],
    )
    assert ex.exit_code == 0, ex.output
    assert (tmp_path / "m.pt").is_file()


def test_fer2013_fetch_checks_the_files(home, server, tmp_path):
    folder = tmp_path / "served"
    write_split_folder(folder)
    for name in ("data_train.csv", "data_val.csv"):
        server.routes[f"/mirror/fer2013/{name}"] = ("file", folder / name)
    server.routes["/mirror/fer2013/data_test.csv"] = ("file", b"emotion,pixels,Usage\n0,1 2 3,PrivateTest\n")
    with pytest.raises(artifacts.DownloadError, match="not one of the authors' FER2013 split files"):
        artifacts.fetch("fer2013")
    assert artifacts.cached_path("fer2013") is None
    server.routes["/mirror/fer2013/data_test.csv"] = ("file", folder / "data_test.csv")
    before = len(server.requests)
    path = artifacts.fetch("fer2013")
    assert server.requests[before:] == ["/mirror/fer2013/data_test.csv"]  # the two good files were kept
    assert path == home / "fer2013"
    for name in ("data_train.csv", "data_val.csv", "data_test.csv"):
        assert (path / name).read_bytes() == (folder / name).read_bytes()


@FULL_SIZE
def test_reproduce_plain_only_prints_the_table_beside_the_paper(lhc_env, tmp_path, cli_runner):
    import json

    from fertool.protocol import PAPER_TABLE7

    home, _ = lhc_env
    result = cli_runner.invoke(
        app, ["reproduce", "--plain-only", "-o", str(tmp_path / "r"), "--device", "cpu", "--batch-size", "2"]
    )
    assert result.exit_code == 0, result.output
    assert "2 PrivateTest images x 2 models x 1 forward passes" in result.output and "about" in result.output
    for label in ("LHC-Net", "LHC-NetC"):
        metrics = json.loads((tmp_path / "r" / label / "metrics.json").read_text())
        assert metrics["n"] == 2 and metrics["tta"] is None
        row = next(line for line in result.stdout.splitlines() if line.strip().startswith(label + " "))
        assert f"{100 * metrics['accuracy']:.2f}%" in row and f"{PAPER_TABLE7[label]['best']:.2f}%" in row
        assert f"{PAPER_TABLE7[label]['best_tta']:.2f}%" in row
    assert artifacts.cached_path("fer2013") == home / "fer2013"
    assert artifacts.cached_path("lhc-netc") == home / "lhc-netc" / "lhc-netc.pt"


def test_leftovers_of_a_killed_download_never_look_fetched_and_are_swept(home, server):
    partial = home / "yunet" / ".partial"
    partial.mkdir(parents=True)
    (partial / "tmpk1ll3d").write_bytes(b"half a file")  # what pooch leaves when killed -9
    assert artifacts.cached_path("yunet") is None
    server.routes[YUNET] = ("file", _onnx_bytes())
    assert artifacts.fetch("yunet").read_bytes() == _onnx_bytes()
    assert not partial.exists()
