"""fertool.locks (one writer per folder) and fertool.tempfiles (owner pid, umask, sweeping)."""

from __future__ import annotations

import os
import re
import signal
import stat
import subprocess
import sys
import textwrap

import pytest

from fertool.errors import FertoolError, InUseError
from fertool.locks import folder_lock, lock_path
from fertool.tempfiles import pid_alive, sweep_stale, temp_dir, temp_file

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _holder(folder) -> subprocess.Popen:
    """Another process that takes the lock of ``folder`` and waits."""
    code = textwrap.dedent(f"""
        import sys, time
        from fertool.locks import folder_lock
        with folder_lock({str(folder)!r}):
            print("locked", flush=True)
            time.sleep(120)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": REPO})
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_a_second_writer_is_refused_with_the_owner_pid_then_takes_over_a_dead_owner(tmp_path):
    folder = tmp_path / "run" / "stage1"
    holder = _holder(folder)
    try:
        with pytest.raises(InUseError) as info:
            with folder_lock(folder):
                pass
        assert str(info.value) == f"{folder} is in use by another fertool process (pid {holder.pid})"
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert lock_path(folder).exists()  # kill -9 left the file behind: a stale lock
    with folder_lock(folder):  # the kernel released it with its process: taken over
        assert lock_path(folder).read_text() == f"{os.getpid()}\n"
    assert not lock_path(folder).exists()  # released locks leave nothing behind


def test_locks_are_reentrant_in_one_process_and_per_folder(tmp_path):
    with folder_lock(tmp_path / "run"):
        with folder_lock(tmp_path / "run"):  # the pipeline holds RUN and calls commands inside it
            assert lock_path(tmp_path / "run").exists()
        assert lock_path(tmp_path / "run").exists()  # still held by the outer block
        with folder_lock(tmp_path / "run" / "stage1"):
            pass
    assert not lock_path(tmp_path / "run").exists()


def test_a_file_where_the_folder_should_be_is_refused(tmp_path):
    (tmp_path / "out").write_text("mine")
    with pytest.raises(FertoolError, match="out: exists and is not a folder"):
        with folder_lock(tmp_path / "out"):
            pass
    with pytest.raises(FertoolError, match=re.escape(f"below: cannot create it ({tmp_path / 'out'} is a file, not a folder)")):
        with folder_lock(tmp_path / "out" / "below"):
            pass
    assert (tmp_path / "out").read_text() == "mine"


@pytest.mark.parametrize("mask", [0o022, 0o002, 0o077])
def test_temporaries_get_the_permissions_of_the_umask(tmp_path, mask):
    old = os.umask(mask)
    try:
        f = temp_file(tmp_path / "best.pt")
        d = temp_dir(tmp_path / "prepared")
    finally:
        os.umask(old)
    assert stat.S_IMODE(f.stat().st_mode) == 0o666 & ~mask
    assert stat.S_IMODE(d.stat().st_mode) == 0o777 & ~mask
    assert f.name.startswith(f".best.pt.{os.getpid()}-") and d.name.startswith(f".prepared.{os.getpid()}-")


def test_sweep_removes_temporaries_of_dead_owners_only(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    assert not pid_alive(dead.pid)
    stale_file = tmp_path / f".last.pt.{dead.pid}-abc123.tmp"
    stale_file.write_bytes(b"half a checkpoint")
    stale_dir = tmp_path / f".prepared.{dead.pid}-x_y1.partial"
    (stale_dir / "Training").mkdir(parents=True)
    mine = temp_file(tmp_path / "last.pt")  # this process is alive: kept
    user = tmp_path / ".last.pt.notes.tmp"  # not of our form: kept
    user.write_text("keep")
    assert sorted(sweep_stale(tmp_path, "last.pt")) == [stale_file]
    assert sorted(sweep_stale(tmp_path)) == [stale_dir]
    assert mine.exists() and user.exists() and not stale_file.exists() and not stale_dir.exists()
