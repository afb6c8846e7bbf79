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
from fertool.locks import HOST, Owner, Wait, folder_lock, lock_holder, lock_path, path_lock
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
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": REPO}
    )
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_a_second_writer_is_refused_with_the_owner_pid_then_takes_over_a_dead_owner(tmp_path):
    folder = tmp_path / "run" / "stage1"
    holder = _holder(folder)
    try:
        with pytest.raises(InUseError) as info:
            with folder_lock(folder):
                pass
        assert str(info.value) == f"{folder} is in use by another fertool process (pid {holder.pid} on {HOST})"
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert lock_path(folder).exists()  # kill -9 left the file behind: a stale lock
    with folder_lock(folder):  # the kernel released it with its process: taken over
        assert lock_path(folder).read_text() == f"{os.getpid()} {HOST}\n"
    assert not lock_path(folder).exists()  # released locks leave nothing behind


def _release_after(proc: subprocess.Popen, seconds: float) -> None:
    import threading

    def stop():
        proc.send_signal(signal.SIGKILL)
        proc.wait()

    threading.Timer(seconds, stop).start()


def test_a_waiting_writer_says_who_holds_the_folder_and_gets_it_when_released(tmp_path):
    folder = tmp_path / "run" / "stage2"
    holder = _holder(folder)
    assert lock_holder(folder) == Owner(holder.pid, HOST)
    lines: list[str] = []
    _release_after(holder, 0.6)
    with folder_lock(folder, wait=Wait(log=lines.append, poll=0.05)):
        assert holder.poll() is not None  # got it only after the holder was gone
        assert lock_path(folder).read_text() == f"{os.getpid()} {HOST}\n"
        assert lock_holder(folder) == Owner(os.getpid(), HOST)
    assert lines == [f"waiting for {folder}, held by pid {holder.pid} on {HOST}"]  # said once
    assert lock_holder(folder) is None


def test_a_wait_gives_up_after_its_timeout(tmp_path):
    folder = tmp_path / "stage1"
    holder = _holder(folder)
    try:
        with pytest.raises(
            InUseError,
            match=re.escape(
                f"stage1 is in use by another fertool process (pid {holder.pid} on {HOST}); gave up waiting after 0.3 s"
            ),
        ):
            with folder_lock(folder, wait=Wait(timeout=0.3, poll=0.05)):
                pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()


def test_another_hosts_lock_is_never_taken_over_and_a_same_host_dead_one_is(tmp_path):
    folder = tmp_path / "seed-3"
    lock_path(folder).write_text("4242 node17\n")  # left by a process on another machine
    message = (
        f"{folder} is locked by pid 4242 on node17, another machine: fertool cannot tell whether that "
        "process still runs, so it never takes over another machine's lock; if it is gone (a failed "
        f"node), delete {lock_path(folder)}"
    )
    with pytest.raises(InUseError) as info:
        with folder_lock(folder):
            pass
    assert str(info.value) == message
    assert lock_holder(folder) == Owner(4242, "node17")
    lines: list[str] = []
    with pytest.raises(InUseError, match="gave up waiting after 0.2 s"):
        with folder_lock(folder, wait=Wait(timeout=0.2, poll=0.05, log=lines.append)):
            pass
    assert lines == [f"waiting for {folder}, held by pid 4242 on node17"]
    assert lock_path(folder).read_text() == "4242 node17\n"  # untouched
    lock_path(folder).unlink()  # what the message says to do once node17 is known to be gone
    with folder_lock(folder):
        pass
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    for left in (f"{dead.pid} {HOST}\n", f"{dead.pid}\n"):  # this host's dead pid (old files: the pid alone)
        lock_path(folder).write_text(left)
        assert lock_holder(folder) is None
        with folder_lock(folder):
            assert lock_path(folder).read_text() == f"{os.getpid()} {HOST}\n"


def test_a_file_can_be_locked_like_a_folder(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("x: 1\n")
    with path_lock(recipe):
        assert lock_path(recipe) == tmp_path / ".recipe.yaml.lock" and lock_path(recipe).exists()
    assert not lock_path(recipe).exists() and recipe.read_text() == "x: 1\n"


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
    with pytest.raises(
        FertoolError, match=re.escape(f"below: cannot create it ({tmp_path / 'out'} is a file, not a folder)")
    ):
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
