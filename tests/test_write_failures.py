"""Every write failure is one ``PATH: cause`` error, with no temporary left and the previous
output intact (issue 26): a real full disk (a 2 MiB tmpfs where mounting is allowed) and
writers that raise."""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fertool.checkpoint import make_checkpoint, save_checkpoint
from fertool.errors import FertoolError
from fertool.files import atomic_dir, atomic_path, write_failure, write_json


@contextlib.contextmanager
def _tmpfs(mnt: Path, size: str):
    """A tmpfs of ``size`` mounted at the new folder ``mnt`` (unmounted afterwards), or a skip."""
    mnt.mkdir()
    try:
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)], capture_output=True, timeout=20
        )
    except (OSError, subprocess.TimeoutExpired):
        pytest.skip("mount is not available here")
    if done.returncode != 0:
        pytest.skip("mounting a tmpfs is not permitted here")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True, timeout=20)


@pytest.fixture
def full_disk(tmp_path):
    """A 2 MiB tmpfs holding ``previous.txt`` and filled to the last byte, or a skip."""
    with _tmpfs(tmp_path / "full", "2m") as mnt:
        (mnt / "previous.txt").write_text("previous")
        fd = os.open(mnt / "filler", os.O_WRONLY | os.O_CREAT)
        try:
            for size in (65536, 4096, 1):
                while True:
                    os.write(fd, b"\0" * size)
        except OSError:
            pass
        finally:
            os.close(fd)
        yield mnt


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name not in ("previous.txt", "filler"))


def test_checkpoint_on_a_full_disk_names_the_file(full_disk):
    ckpt = make_checkpoint(state_dict={"w": torch.zeros(600_000)}, arch="resnet34v2", arch_args={})
    with pytest.raises(FertoolError) as info:
        save_checkpoint(full_disk / "previous.txt", ckpt)
    assert str(info.value).startswith(f"{full_disk / 'previous.txt'}: No space left on device")
    assert (full_disk / "previous.txt").read_text() == "previous" and _leftovers(full_disk) == []


def test_json_and_folder_on_a_full_disk_name_the_output(full_disk):
    with pytest.raises(FertoolError, match=rf"^{full_disk / 'out.json'}: No space left on device"):
        write_json(full_disk / "out.json", {"x": "y" * 100_000})
    with pytest.raises(FertoolError, match=rf"^{full_disk / 'report'}"):
        with atomic_dir(full_disk / "report", "report") as tmp:
            (tmp / "report.md").write_text("x" * 100_000)
    assert _leftovers(full_disk) == []


def test_torchscript_export_on_a_full_disk_is_an_error_not_an_abort(full_disk):
    """A subprocess: before the fix torch's writer called C++ terminate (exit 134)."""
    code = (
        "import sys; from tests.test_export import *; from fertool.deploy import export as E\n"
        "from fertool.errors import FertoolError\n"
        f"ckpt = make_tiny_checkpoint(__import__('pathlib').Path({str(full_disk.parent)!r}) / 'c.pt', "
        "arch='resnet34v2')\n"
        f"try:\n    E.export_model(ckpt, {str(full_disk / 'model.pt')!r}, fmt='torchscript')\n"
        "except FertoolError as exc:\n    print('ERROR', exc); sys.exit(1)\n"
    )
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
    )
    assert done.returncode == 1, done.stderr[-2000:]
    assert f"ERROR {full_disk / 'model.pt'}: No space left on device" in done.stdout
    assert _leftovers(full_disk) == []


@pytest.mark.parametrize(
    "exc",
    [
        OSError(errno.ENOSPC, "No space left on device"),
        OSError(errno.EROFS, "Read-only file system"),
        OSError(errno.EACCES, "Permission denied"),
        RuntimeError("[enforce fail at inline_container.cc:783] . PytorchStreamWriter failed writing file data/0"),
    ],
)
def test_a_writer_raising_is_one_error_naming_the_output(tmp_path, exc):
    out = tmp_path / "out.pt"
    out.write_text("previous")
    with pytest.raises(FertoolError) as info:
        with atomic_path(out) as tmp:
            tmp.write_text("half")
            raise exc
    assert str(info.value).startswith(f"{out}: ")
    assert out.read_text() == "previous" and [p.name for p in tmp_path.iterdir()] == ["out.pt"]


def test_other_exceptions_are_not_disguised_as_write_failures(tmp_path):
    assert write_failure(RuntimeError("shape mismatch"), tmp_path / "x") is None
    assert write_failure(KeyboardInterrupt(), tmp_path / "x") is None


def test_dead_temporaries_of_an_output_are_swept(tmp_path):
    dead = tmp_path / ".out.json.999999999-abc.tmp"  # no such pid
    dead.write_text("left by kill -9")
    write_json(tmp_path / "out.json", {})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]


@pytest.fixture
def small_disk(tmp_path):
    """An empty 1 MiB tmpfs, or a skip."""
    with _tmpfs(tmp_path / "small", "1m") as mnt:
        yield mnt


def test_an_image_cache_too_big_for_the_disk_is_an_error_not_a_sigbus(small_disk, tmp_path):
    """The cache's file is allocated before it is filled: a full disk is ENOSPC naming the cache
    (a sparse memory map died of SIGBUS), its temporaries are removed, dead ones swept."""
    import cv2
    import numpy as np

    rng = np.random.default_rng(0)
    for cls in ("Anger", "Happiness"):
        (tmp_path / "images" / cls).mkdir(parents=True)
        for i in range(12):  # 24 x 160 x 160 x 3 bytes: 1.8 MB, more than the 1 MiB disk
            cv2.imwrite(str(tmp_path / "images" / cls / f"{i}.png"), rng.integers(0, 256, (160, 160, 3), np.uint8))
    cache = small_disk / "cache"
    cache.mkdir()
    from fertool.data.cache import _folder_source

    source = _folder_source(tmp_path / "images", None)
    dead = cache / f".{source.tag}-{source.key}.npy.999999999-abc-grey.tmp"  # left by a killed build (no such pid)
    dead.write_bytes(b"\0" * 300_000)
    code = (
        "import sys\n"
        "from fertool.data.cache import open_image_split\n"
        "from fertool.errors import FertoolError\n"
        "try:\n"
        f"    open_image_split({str(tmp_path / 'images')!r}, None, cache_dir={str(cache)!r}, workers=1)\n"
        "except FertoolError as exc:\n"
        "    print(exc)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, (done.returncode, done.stderr)  # -7: SIGBUS
    assert done.stdout.startswith(f"{cache}/") and done.stdout.strip().endswith(": No space left on device")
    assert ".tmp" not in done.stdout  # the cache is named, not its temporary
    assert [p.name for p in cache.iterdir() if not p.name.endswith(".lock")] == []  # dead one swept, own removed
