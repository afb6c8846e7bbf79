"""Named artefacts fetched on request and cached: the authors' models, their FER2013 files,
the ImageNet start of stage 1 and a face detector.

Each entry of :data:`REGISTRY` names its source URL(s) (the first that answers is used),
its size, the checksum where one is published, its licence or terms, and what it becomes
once fetched (:attr:`Entry.product`):

========================= ======================================================================
``resnet34-imagenet``     ``cache_dir()/resnet34-imagenet/resnet34v2-imagenet.pt`` (imported .h5)
``lhc-net``, ``lhc-netc`` ``cache_dir()/lhc-net/lhc-net.pt`` (imported TF checkpoint)
``fer2013``               the folder ``cache_dir()/fer2013`` with ``data_{train,val,test}.csv``
``yunet``                 ``cache_dir()/yunet/face_detection_yunet_2023mar.onnx``
========================= ======================================================================

The cache is ``$FERTOOL_HOME`` when set, else the platform's user cache folder
(``platformdirs.user_cache_dir("fertool")``).  A mirror (``$FERTOOL_MIRROR``, or a line
``mirror: URL`` in ``cache_dir()/config.yaml``) replaces every source URL by
``MIRROR/<name>/<file>``, for air-gapped sites and for the tests.

Downloading goes through pooch (streamed to a temporary file, checksum verified, retried,
moved into place only when complete) into ``cache_dir()/<name>/.partial/``; the files are
then checked for what they must be (an HTML page or a Git LFS pointer is refused), imported
where the entry says so, and only then moved to their final place, with ``fetched.json``
(URL, bytes and sha256 of every file) written last.  :func:`cached_path` answers from the
final places alone, so an interrupted or failed fetch never looks complete; the files of a
partial fetch that did arrive whole are reused by the next attempt.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .errors import FertoolError, printable
from .files import read_json, sha256_file, write_json
from .progress import Progress

__all__ = [
    "REGISTRY",
    "Entry",
    "Source",
    "DownloadError",
    "cache_dir",
    "mirror_url",
    "cached_path",
    "fetch",
    "entry",
    "is_name",
    "fetched_record",
    "RETRIES",
    "TIMEOUT",
]

#: Extra attempts after a failed download (connection lost, bad checksum).
RETRIES = 2
#: Seconds without data before a download is given up.
TIMEOUT = 60.0
_RECORD = "fetched.json"
_PARTIAL = ".partial"
#: The way round a failed download, per kind of entry.
_MANUAL = {
    "tensorflow": "without internet, download its files elsewhere (fertool download --list shows them) and run "
    "`fertool import DIR` on their folder",
    "keras": "without internet, download the file elsewhere and run `fertool import FILE`",
    "fer2013-split": "without internet, download the three files elsewhere and give their folder as the FER2013 CSV",
    "file": "without internet, download the file elsewhere and give its path instead of the name",
}


class DownloadError(FertoolError):
    """An artefact could not be fetched (no connection, HTTP error, wrong checksum, wrong content)."""


@dataclass(frozen=True)
class Source:
    """One file to download."""

    path: str  # where it lands under the entry's folder (may hold a subfolder)
    urls: tuple[str, ...]  # tried in order
    known_hash: str | None = None  # "md5:..." / "sha256:..." when published
    size: int | None = None  # bytes, when known (approximate sizes are in Entry.size_note)


@dataclass(frozen=True)
class Entry:
    name: str
    title: str
    sources: tuple[Source, ...]
    licence: str
    kind: str  # "file" | "keras" | "tensorflow" | "fer2013-split"
    product: str  # relative to cache_dir()/name; "." for the folder itself
    size_note: str  # human size, e.g. "85 MB"
    becomes: str  # what it becomes once fetched, in words

    def folder(self) -> Path:
        return cache_dir() / self.name

    def product_path(self) -> Path:
        return self.folder() if self.product == "." else self.folder() / self.product


_DROPBOX = "https://www.dropbox.com/s/{}?dl=1"


def _tf_sources(folder: str, prefix: str, keys: tuple[str, str, str]) -> tuple[Source, ...]:
    names = ("checkpoint", f"{prefix}.data-00000-of-00001", f"{prefix}.index")
    return tuple(Source(f"{folder}/{n}", (_DROPBOX.format(f"{k}/{n}"),)) for k, n in zip(keys, names))


REGISTRY: dict[str, Entry] = {
    e.name: e
    for e in (
        Entry(
            "resnet34-imagenet",
            "ResNet34 ImageNet weights (classification_models), the paper's stage-1 start",
            (
                Source(
                    "resnet34_imagenet_1000_no_top.h5",
                    (
                        "https://github.com/qubvel/classification_models/releases/download/0.0.1/"
                        "resnet34_imagenet_1000_no_top.h5",
                    ),
                    known_hash="md5:8caaa0ad39d927cb8ba5385bf945d582",
                ),
            ),
            "MIT (qubvel/classification_models); ImageNet-trained weights",
            "keras",
            "resnet34v2-imagenet.pt",
            "about 85 MB",
            "a fertool checkpoint for model.pretrained (model.pretrained: imagenet)",
        ),
        Entry(
            "lhc-net",
            "the authors' trained LHC-Net (paper: 73.39%, 74.42% with TTA)",
            _tf_sources("LHC_Net", "LHC_Net", ("gk7e7wjp9fyoea1", "snartpm0ikntquy", "tq561bgbqxdf5jh")),
            "MIT (github.com/Bodhis4ttva/LHC_Net)",
            "tensorflow",
            "lhc-net.pt",
            "a few hundred MB (no size published)",
            "a fertool checkpoint (fertool import of the TF checkpoint)",
        ),
        Entry(
            "lhc-netc",
            "the authors' trained LHC-NetC (paper: 73.53%, 74.28% with TTA)",
            _tf_sources("LHC_NetC", "LHC_Net_Controller", ("gdsaj9bhjrnycz5", "6pfpmyz41pgfuce", "fkfjfer31m9ilnk")),
            "MIT (github.com/Bodhis4ttva/LHC_Net)",
            "tensorflow",
            "lhc-netc.pt",
            "a few hundred MB (no size published)",
            "a fertool checkpoint (fertool import of the TF checkpoint)",
        ),
        Entry(
            "fer2013",
            "FER2013 as the authors publish it: data_train.csv, data_val.csv, data_test.csv",
            tuple(
                Source(n, (_DROPBOX.format(f"{k}/{n}"),))
                for k, n in (
                    ("d939ucy3bumt9hb", "data_train.csv"),
                    ("6ghexq1uijis473", "data_val.csv"),
                    ("py8um99gnjjwcub", "data_test.csv"),
                )
            ),
            "FER2013's terms are those of the Kaggle challenge (Challenges in Representation Learning); "
            "this is the authors' copy, fetched only when asked",
            "fer2013-split",
            ".",
            "about 300 MB (no size published)",
            "a folder usable wherever a FER2013 CSV is (--csv)",
        ),
        Entry(
            "yunet",
            "YuNet face detector (OpenCV Zoo, face_detection_yunet_2023mar.onnx)",
            (
                Source(
                    "face_detection_yunet_2023mar.onnx",
                    (
                        "https://github.com/opencv/opencv_zoo/raw/main/models/face_detection_yunet/"
                        "face_detection_yunet_2023mar.onnx",
                        "https://huggingface.co/opencv/face_detection_yunet/resolve/main/face_detection_yunet_2023mar.onnx",
                    ),
                ),
            ),
            "MIT (opencv/opencv_zoo)",
            "file",
            "face_detection_yunet_2023mar.onnx",
            "about 0.3 MB",
            "an ONNX file for OpenCV's FaceDetectorYN",
        ),
    )
}

#: Entries that are models, usable where a checkpoint path is.
MODEL_NAMES = tuple(n for n, e in REGISTRY.items() if e.kind in ("keras", "tensorflow"))


def entry(name: str) -> Entry:
    try:
        return REGISTRY[name]
    except KeyError:
        raise DownloadError(f"unknown artefact '{printable(name)}' (known: {', '.join(REGISTRY)})") from None


def is_name(value: str | os.PathLike) -> bool:
    """Whether ``value`` is a registry name (and not an existing path of that name)."""
    return str(value) in REGISTRY and not Path(value).exists()


# --------------------------------------------------------------------------- places


def cache_dir() -> Path:
    """``$FERTOOL_HOME`` when set, else the platform's user cache folder for fertool."""
    home = os.environ.get("FERTOOL_HOME")
    if home:
        return Path(home).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("fertool"))


def mirror() -> str | None:
    """The mirror replacing every source URL: ``$FERTOOL_MIRROR``, else ``mirror:`` in config.yaml."""
    value = os.environ.get("FERTOOL_MIRROR")
    if value:
        return value.rstrip("/")
    config = cache_dir() / "config.yaml"
    if config.is_file():
        import yaml

        try:
            data = yaml.safe_load(config.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise DownloadError(f"{config}: cannot read ({exc})") from None
        if not isinstance(data, dict):
            raise DownloadError(f"{config}: expected a mapping such as 'mirror: https://host/path'")
        if data.get("mirror"):
            return str(data["mirror"]).rstrip("/")
    return None


def mirror_url(name: str, source: Source) -> tuple[str, ...]:
    """The URLs to try for ``source`` of entry ``name`` (the mirror's alone when one is set)."""
    base = mirror()
    if base is not None:
        return (f"{base}/{name}/{source.path}",)
    return source.urls


def cached_path(name: str) -> Path | None:
    """What ``name`` became once fetched, if it is in the cache; never downloads."""
    e = entry(name)
    product = e.product_path()
    if e.product == ".":
        return product if (product / _RECORD).is_file() else None
    return product if product.is_file() else None


def fetched_record(name: str) -> dict | None:
    """``fetched.json`` of a fetched entry: per file its URL, bytes and sha256."""
    return read_json(entry(name).folder() / _RECORD)


# --------------------------------------------------------------------------- fetching


class _PoochProgress:
    """The tqdm-like object pooch's HTTPDownloader drives, forwarding to a progress callback."""

    def __init__(self, progress: Progress, description: str) -> None:
        self.progress, self.description = progress, description
        self.total, self.n = 0, 0

    def update(self, k: int) -> None:
        self.n += k
        total = self.total or None
        self.progress(min(self.n, total) if total else self.n, total, description=self.description, unit="B")

    def reset(self) -> None:
        self.n = 0

    def close(self) -> None:
        pass


def _download(name: str, source: Source, staging: Path, progress: Progress | None) -> tuple[Path, str]:
    """One file into ``staging`` (reused when a previous attempt left it there whole)."""
    import logging

    import pooch
    import requests

    pooch.get_logger().setLevel(logging.WARNING)
    target = staging / source.path
    last: DownloadError | None = None
    for url in mirror_url(name, source):
        if target.is_file():
            return target, url
        bar = _PoochProgress(progress, f"{name}: {source.path}") if progress is not None else False
        fetcher = pooch.create(
            path=staging,
            base_url="",
            registry={source.path: source.known_hash},
            urls={source.path: url},
            retry_if_failed=RETRIES,
        )
        try:
            fetcher.fetch(source.path, downloader=pooch.HTTPDownloader(progressbar=bar, timeout=TIMEOUT))
            return target, url
        except requests.exceptions.HTTPError as exc:
            status = exc.response.status_code if exc.response is not None else "?"
            reason = exc.response.reason if exc.response is not None else str(exc)
            last = DownloadError(f"{url}: HTTP {status} {reason}")
        except requests.exceptions.Timeout as exc:
            last = DownloadError(f"{url}: no answer within {TIMEOUT:.0f} s ({_cause(exc)})")
        except requests.exceptions.ConnectionError as exc:
            last = DownloadError(f"{url}: cannot download ({_cause(exc)})")
        except requests.exceptions.RequestException as exc:
            last = DownloadError(f"{url}: download failed ({_cause(exc)})")
        except ValueError as exc:  # pooch: hash mismatch
            last = DownloadError(f"{url}: checksum mismatch: {_hash_message(exc, source)}")
    assert last is not None
    raise last


def _cause(exc: BaseException) -> str:
    """The root of a requests error in a few words (``[Errno 111] Connection refused``)."""
    import re

    text = str(exc)
    errno = re.search(r"\[Errno -?\d+\] [^'\")\]]+", text)
    if errno:
        return printable(errno.group().strip())
    if "IncompleteRead" in text or "Connection broken" in text:
        return "the connection broke before the whole file arrived"
    lines = text.strip().splitlines()
    return printable(lines[0][:160]) if lines else type(exc).__name__


def _hash_message(exc: ValueError, source: Source) -> str:
    import re

    found = re.search(r"but got ([0-9a-fA-F]+)", str(exc))
    algorithm = (source.known_hash or "").split(":")[0]
    return f"expected {source.known_hash}, got {algorithm}:{found.group(1) if found else '(another)'}"


def _check_content(path: Path, url: str, kind: str) -> None:
    """Refuse what is clearly not the file: an HTML page, a Git LFS pointer, an empty file."""
    with open(path, "rb") as fh:
        head = fh.read(512)
    text = head.lstrip().lower()
    if not head:
        raise DownloadError(f"{url}: the server sent an empty file")
    if text.startswith((b"<!doctype html", b"<html", b"<?xml", b"<head", b"<body")):
        raise DownloadError(f"{url}: the server sent an HTML page, not the file (a login, quota or error page)")
    if head.startswith(b"version https://git-lfs"):
        raise DownloadError(f"{url}: the server sent a Git LFS pointer (text), not the file")
    if kind == "file" and path.suffix == ".onnx":
        import onnx

        try:
            onnx.load_model(str(path), load_external_data=False)
        except Exception as exc:  # noqa: BLE001 - any parse failure means "not an ONNX model"
            raise DownloadError(f"{url}: not an ONNX model ({_cause(exc)})") from None


def fetch(name: str, progress: Progress | None = None, *, note: Callable[[str], None] | None = None) -> Path:
    """What ``name`` becomes once fetched (see :func:`cached_path`), downloading it if needed.

    ``progress(done, total, description=..., unit="B")`` follows each file's bytes; ``note``
    (a one-line message callback) hears what is downloaded from where before it starts.
    A failure raises :class:`DownloadError` (one line: the URL, what went wrong, the cache
    folder and the manual route) and leaves nothing that :func:`cached_path` would return.
    """
    e = entry(name)
    done = cached_path(name)
    if done is not None:
        return done
    folder = e.folder()
    staging = folder / _PARTIAL
    if note is not None:
        where = mirror() or ", ".join(sorted({s.urls[0].split("/")[2] for s in e.sources}))
        note(f"fetching {name} ({e.title}; {e.size_note}) from {where} into {folder}")
    from .locks import folder_lock

    with folder_lock(folder):  # one fetch of an entry at a time; a second process fails at once
        done = cached_path(name)  # fetched by the process that held the lock before
        if done is not None:
            return done
        _sweep(staging, {s.path for s in e.sources})
        _fetch_into(e, staging, progress, note)
    shutil.rmtree(staging, ignore_errors=True)
    return e.product_path()


def _sweep(staging: Path, keep: set[str]) -> None:
    """Remove what a killed download left in ``staging`` (pooch's temporary files); whole files stay."""
    if not staging.is_dir():
        return
    for path in sorted(staging.rglob("*"), reverse=True):
        rel = path.relative_to(staging).as_posix()
        if path.is_file() and rel not in keep:
            path.unlink(missing_ok=True)


def _fetch_into(e: Entry, staging: Path, progress: Progress | None, note: Callable[[str], None] | None) -> None:
    name, folder = e.name, e.folder()
    records = []
    try:
        for source in e.sources:
            path, url = _download(name, source, staging, progress)
            try:
                _check_content(path, url, e.kind)
            except DownloadError:
                path.unlink(missing_ok=True)
                raise
            records.append({"path": source.path, "url": url, "bytes": path.stat().st_size, "sha256": sha256_file(path)})
        _finish(e, staging, records, note)
    except DownloadError as exc:
        raise DownloadError(f"{exc}; nothing cached in {folder}; {_MANUAL[e.kind]}") from None


def _finish(e: Entry, staging: Path, records: list[dict], note: Callable[[str], None] | None = None) -> None:
    """Turn the downloaded files into the entry's product; fetched.json last."""
    folder = e.folder()
    first_url = records[0]["url"]
    if e.kind in ("keras", "tensorflow"):
        from .checkpoint import save_checkpoint
        from .models.importer import import_weights

        source = staging / e.sources[0].path
        if e.kind == "tensorflow":
            source = source.parent  # the folder holding the 'checkpoint' file
        if note is not None:
            note(f"importing {source.name} ({e.kind}) as a fertool checkpoint")
        try:
            ckpt = import_weights(source)
        except FertoolError as exc:
            for r in records:  # whatever arrived is not the model: fetch it again next time
                (staging / r["path"]).unlink(missing_ok=True)
            raise DownloadError(f"{first_url}: the files are not the expected model ({exc})") from None
        ckpt.setdefault("extra", {})["artifact"] = {"name": e.name, "files": records}
        write_json(folder / _RECORD, {"name": e.name, "files": records})
        save_checkpoint(e.product_path(), ckpt)
        for r in records:  # keep the downloaded files beside the product (their sha256 is recorded)
            dest = folder / r["path"]
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(staging / r["path"], dest)
        return
    if e.kind == "fer2013-split":
        from .data.authors_split import check_split_file

        for r in records:
            try:
                check_split_file(staging / r["path"])
            except FertoolError as exc:
                (staging / r["path"]).unlink(missing_ok=True)
                raise DownloadError(f"{r['url']}: not one of the authors' FER2013 split files ({exc})") from None
    for r in records:
        dest = folder / r["path"]
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging / r["path"], dest)
    write_json(folder / _RECORD, {"name": e.name, "files": records})
