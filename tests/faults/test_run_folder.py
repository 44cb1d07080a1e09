"""The run folder's transaction and lock, without training: two writers, stale locks, a kill in the middle of a
replacement, stale temporaries of killed writers. Each asserts the message and what is (not) on disk."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from peftkit.errors import PeftkitError
from peftkit.fileio import atomic_dir, clean_stale_temps
from peftkit.training.run_folder import STATUS_FILE, RunFolder, check_can_write, staging_dir
from peftkit.training.run_lock import RunLock
from tests.faults.helpers import snapshot


def _dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    done = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    return int(done.stdout)


def _run_folder(root: Path, name: str, files: dict[str, str], state: str | None = None) -> Path:
    folder = root / name
    for rel, text in files.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_text(text)
    if state:
        (folder / STATUS_FILE).write_text(json.dumps({"state": state}))
    return folder


def test_second_writer_is_refused_before_writing(tmp_path):
    target = tmp_path / "runs" / "a"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; from peftkit.training.run_lock import RunLock; "
            f"RunLock(Path({str(target)!r})).acquire(); print('held', flush=True); time.sleep(600)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        before = snapshot(tmp_path)
        for attempt in (RunLock(target).check, RunLock(target).acquire):
            with pytest.raises(PeftkitError) as err:
                attempt()
            message = str(err.value)
            assert f"run folder '{target}' is being written by another run (pid {holder.pid} on" in message
            assert "wait for it to finish" in message and "train.output_dir=PATH" in message
        with pytest.raises(PeftkitError, match="being written by another run"):
            RunFolder(target, overwrite=True, resume=False).open()
        assert snapshot(tmp_path) == before, "the refused writer wrote something"
    finally:
        holder.kill()
        holder.wait()


def test_only_the_main_process_of_a_launch_checks_the_lock(tmp_path, monkeypatch):
    # A launch's main process takes the lock; its other processes, still checking their inputs (or finishing the
    # previous run of the same launch), must not take that lock for another run's.
    target = tmp_path / "runs" / "a"
    lock = RunLock(target)
    lock.acquire()
    try:
        monkeypatch.setenv("RANK", "0")
        with pytest.raises(PeftkitError, match="being written by another run"):
            check_can_write(target, overwrite=False, resume=False)
        monkeypatch.setenv("RANK", "1")
        check_can_write(target, overwrite=False, resume=False)
    finally:
        lock.release()


def test_lock_of_a_killed_process_is_taken_over_with_a_note(tmp_path, capsys):
    target = tmp_path / "a"
    lock = RunLock(target)
    lock.path.write_text(
        json.dumps({"pid": _dead_pid(), "host": socket.gethostname(), "command": "peftkit train r"})
    )
    lock.check()  # not held by anyone: no refusal
    lock.acquire()
    assert "was left by pid" in capsys.readouterr().err
    owner = json.loads(lock.path.read_text())
    assert owner["pid"] == os.getpid() and owner["host"] == socket.gethostname()
    with pytest.raises(PeftkitError, match="being written by another run"):
        RunLock(target).acquire()  # a second lock in this same process is refused too
    lock.release()
    assert not lock.path.exists()


def test_lock_of_another_machine_is_reported_with_the_fix(tmp_path):
    target = tmp_path / "a"
    lock = RunLock(target)
    lock.path.write_text(json.dumps({"pid": 4242, "host": "elsewhere", "started": "yesterday"}))
    for attempt in (lock.check, lock.acquire):
        with pytest.raises(PeftkitError) as err:
            attempt()
        assert "locked by pid 4242 on another machine (elsewhere" in str(err.value)
        assert f"delete the lock file {lock.path}" in str(err.value)
    assert json.loads(lock.path.read_text())["host"] == "elsewhere"


def test_commit_replaces_the_old_run_and_abort_keeps_it(tmp_path):
    old = _run_folder(tmp_path, "a", {"recipe.resolved.yaml": "old", "adapter/w": "old"})
    before = snapshot(old)
    run = RunFolder(old, overwrite=True, resume=False, save_every=4)
    run.open()
    run.begin("new")
    assert snapshot(old) == before
    error = run.abort(ValueError("boom"))  # no checkpoint yet: nothing kept
    assert error is None and snapshot(old) == before and not staging_dir(old).exists()
    assert not run.lock.path.exists()

    run = RunFolder(old, overwrite=True, resume=False)
    run.open()
    run.begin("new")
    (run.path / "adapter").mkdir()
    run.commit()
    assert (old / "recipe.resolved.yaml").read_text() == "new" and not (old / "adapter" / "w").exists()
    assert json.loads((old / STATUS_FILE).read_text())["state"] == "complete"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]


@pytest.mark.parametrize(
    "leftover, expected",
    [
        # killed between the two renames: the finished run is put in place, the old one dropped
        ({"aside": "old", "staging": "complete"}, "new"),
        # killed after both renames, before the old one was deleted
        ({"aside": "old", "target": "new"}, "new"),
        # killed after the run was marked complete, before any rename
        ({"target": "old", "staging": "complete"}, "new"),
        # an aside with no finished run to replace it: the old run comes back
        ({"aside": "old", "staging": "failed"}, "old"),
    ],
    ids=["between-renames", "after-renames", "before-renames", "restore-old"],
)
def test_a_kill_during_a_replacement_is_finished_by_the_next_run(tmp_path, capsys, leftover, expected):
    target = tmp_path / "a"
    if "target" in leftover:
        _run_folder(tmp_path, "a", {"recipe.resolved.yaml": leftover["target"]})
    if "aside" in leftover:
        _run_folder(tmp_path, ".a.replaced", {"recipe.resolved.yaml": "old"})
    if "staging" in leftover:
        state = leftover["staging"]
        files = {"recipe.resolved.yaml": "new"}
        if state == "failed":
            files["checkpoints/step-000004/state.json"] = "{}"
        _run_folder(tmp_path, "a.partial", files, state=state)
    run = RunFolder(target, overwrite=True, resume=False)
    run.open()
    run.lock.release()
    assert (target / "recipe.resolved.yaml").read_text() == expected
    assert not (tmp_path / ".a.replaced").exists()
    err = capsys.readouterr().err
    if expected == "old":
        assert f"restored the previous run in '{target}'" in err and "finished replacing" not in err
    elif leftover.get("staging") == "complete" or "target" not in leftover:
        assert f"finished replacing run folder '{target}'" in err


def test_stale_temporaries_of_dead_writers_are_cleaned(tmp_path):
    host, dead = socket.gethostname(), _dead_pid()
    stale = tmp_path / f".merged.~{dead}@{host}~x1.tmp"
    live = tmp_path / f".merged.~{os.getpid()}@{host}~x2.tmp"
    remote = tmp_path / f".merged.~{dead}@other-host~x3.tmp"
    for folder in (stale, live, remote):
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"half")
    (tmp_path / "keep.tmp").write_text("not ours")
    assert clean_stale_temps(tmp_path) == [stale]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, remote.name, "keep.tmp"])
    with atomic_dir(tmp_path / "merged") as tmp:  # the next writer of the folder cleans too
        (tmp / "f").write_text("x")
    assert (tmp_path / "merged" / "f").read_text() == "x" and oct((tmp_path / "merged").stat().st_mode)[
        -3:
    ] != "700"


def test_atomic_dir_failure_keeps_the_old_folder(tmp_path):
    out = _run_folder(tmp_path, "merged", {"config.json": "old"})
    with pytest.raises(OSError), atomic_dir(out) as tmp:
        (tmp / "config.json").write_text("new")
        raise OSError(28, "No space left on device")
    assert (out / "config.json").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["merged"]
