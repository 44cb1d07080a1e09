"""A run folder is a transaction with one writer: a run replaces an earlier one only after it succeeds.

A run never writes into its target folder `NAME/`. It trains in `NAME.partial/` beside it and, once everything
(checkpoints, log, adapter, metrics, plots, card) is written, replaces `NAME/` with it by renames. So:

- a run that fails or is killed leaves `NAME/` exactly as it was;
- it keeps `NAME.partial/` only when that holds a complete checkpoint to resume from (`run_status.json` there says
  `failed` and why); otherwise `NAME.partial/` is removed (or, after a kill, removed by the next run);
- `--resume` continues `NAME.partial/`, or, when there is none, a copy of `NAME/` (a finished run trained further);
- `.NAME.lock` beside the folder admits one writer (flock, with the owner's pid, host and command inside). A lock
  left by a process of this machine that died is taken over with a note; one of another machine, whose process
  cannot be checked from here, is reported with how to remove it;
- what a killed run left half-done (temporary files, a half-finished replacement) is finished or cleaned by the next
  run of the same folder, under the lock.

Only the main process of a multi-process run opens, commits or aborts the run; the others wait for it and fail with
it (`distributed.main_process_call`).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import time
from pathlib import Path

from peftkit.errors import PeftkitError, shorten
from peftkit.fileio import (
    atomic_dir,
    atomic_write_json,
    atomic_write_text,
    clean_stale_temps,
    free_space,
    fsync_dir,
    remove_dir,
    write_failure,
)
from peftkit.training.checkpoints import latest_checkpoint

STAGING_SUFFIX = ".partial"
STATUS_FILE = "run_status.json"
RECIPE_FILE = "recipe.resolved.yaml"


def staging_dir(target: Path) -> Path:
    """Where a run of `target` writes until it succeeds: `NAME.partial` beside it."""
    return target.with_name(target.name + STAGING_SUFFIX)


def _aside(target: Path) -> Path:
    """Where the previous run waits, for the instant between the two renames that replace it."""
    return target.with_name(f".{target.name}.replaced")


def is_run_folder(folder: Path) -> bool:
    """Whether `folder` was written by `peftkit train` (only run folders may be replaced with --overwrite)."""
    return (folder / RECIPE_FILE).is_file() or (folder / STATUS_FILE).is_file()


def read_status(folder: Path) -> dict:
    """The run_status.json of a (staging) folder, or {} when it has none or it cannot be read."""
    try:
        status = json.loads((folder / STATUS_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return status if isinstance(status, dict) else {}


def resume_source(target: Path) -> Path | None:
    """The folder `--resume` continues: the unfinished run beside `target` when it has a complete checkpoint, else
    `target` itself when it has one, else None."""
    for folder in (staging_dir(target), target):
        if latest_checkpoint(folder) is not None:
            return folder
    return None


def _say(message: str) -> None:
    print(f"peftkit: note: {message}", file=sys.stderr)


def _owner() -> dict:
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "command": " ".join(sys.argv)[:200],
    }


class RunLock:
    """`.NAME.lock` beside a run folder, held with flock(2) by the one process writing the run."""

    def __init__(self, target: Path):
        self.target = target
        self.path = target.with_name(f".{target.name}.lock")
        self.fd: int | None = None

    def check(self) -> None:
        """Refuse (PeftkitError) when another live process holds the lock; writes nothing."""
        import fcntl

        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                raise self._busy(self._owner_of(fd)) from None
            self._check_other_host(self._owner_of(fd))
        finally:
            os.close(fd)

    def acquire(self) -> None:
        """Take the lock or raise PeftkitError; a lock left by a dead process of this machine is taken over."""
        import fcntl

        self.target.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                owner = self._owner_of(fd)
                os.close(fd)
                raise self._busy(owner) from None
            try:  # its owner may have removed the file between our open and flock: lock the file now there
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        previous = self._owner_of(fd)
        try:
            self._check_other_host(previous)
        except PeftkitError:
            os.close(fd)
            raise
        if previous:  # a clean release removes the file: content means its owner died holding it
            _say(
                f"run folder lock {self.path} was left by pid {previous.get('pid')} "
                f"({previous.get('command', '?')[:80]}), which is no longer running; taking it over."
            )
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(_owner()) + "\n").encode(), 0)
        os.fsync(fd)
        self.fd = fd

    def release(self) -> None:
        """Remove the lock file and let go of the lock (removed first, so a waiting process locks a new file)."""
        if self.fd is None:
            return
        try:
            if os.stat(self.path).st_ino == os.fstat(self.fd).st_ino:
                self.path.unlink()
        except FileNotFoundError:
            pass
        os.close(self.fd)
        self.fd = None

    @staticmethod
    def _owner_of(fd: int) -> dict:
        try:
            owner = json.loads(os.pread(fd, 4096, 0) or b"{}")
        except ValueError:
            return {"pid": "?", "host": "?"}
        return owner if isinstance(owner, dict) else {}

    def _busy(self, owner: dict) -> PeftkitError:
        return PeftkitError(
            f"train.output_dir: run folder '{self.target}' is being written by another run (pid "
            f"{owner.get('pid', '?')} on {owner.get('host', '?')}, since {owner.get('started', '?')}: "
            f"`{str(owner.get('command', '?'))[:120]}`). Two runs must not write one folder: wait for it to "
            f"finish (or stop it), or give this run another folder with train.output_dir=PATH."
        )

    def _check_other_host(self, owner: dict) -> None:
        host = owner.get("host")
        if host and host != socket.gethostname():
            raise PeftkitError(
                f"train.output_dir: run folder '{self.target}' is locked by pid {owner.get('pid', '?')} on another "
                f"machine ({host}, since {owner.get('started', '?')}), which cannot be checked from here. If no "
                f"peftkit run is writing to it on {host} any more, delete the lock file {self.path} and run again."
            )


class RunFolder:
    """One run's transaction over `target`: `open` (lock, clean up, prepare `path`), `begin`, then `commit` or
    `abort`. `path` (NAME.partial) is where the run writes; it is the same on every process."""

    def __init__(self, target: Path, *, overwrite: bool, resume: bool, save_every: int | None = None):
        self.target, self.path = target, staging_dir(target)
        self.overwrite, self.resume, self.save_every = overwrite, resume, save_every
        self.lock = RunLock(target)
        self.created = self.begun = False
        self.main: bool | None = None  # None until opened; then whether this is the process that writes

    def open(self, accelerator=None) -> None:
        """Take the lock, finish or clean up what a killed run left, and prepare `path` (on the main process of
        `accelerator`'s run; the others wait for it). Writes nothing but the lock when the folder is in order."""
        from peftkit.training.distributed import main_process_call

        self.main = accelerator is None or accelerator.is_main_process
        self.accelerator = accelerator
        main_process_call(accelerator, self._open)

    def _open(self) -> None:
        try:
            self.lock.acquire()
        except OSError as exc:
            raise PeftkitError(
                f"train.output_dir: cannot write beside run folder '{self.target}' (the lock file "
                f"{self.lock.path}: {write_failure(exc) or shorten(exc)}). Choose a run folder you may write with "
                f"train.output_dir=PATH."
            ) from None
        try:
            self._recover()
            if self.resume:
                if latest_checkpoint(self.path) is None:  # continue the run in `target`, on a copy of it
                    remove_dir(self.path)
                    with atomic_dir(self.path) as tmp:
                        shutil.copytree(self.target, tmp, dirs_exist_ok=True, ignore=_ignore_status)
                    self.created = True
            else:
                if self.path.exists():
                    if (
                        latest_checkpoint(self.path) is not None and not self.overwrite
                    ):  # appeared after preflight
                        raise PeftkitError(unfinished_run_message(self.target))
                    remove_dir(self.path)
                self.path.mkdir()
                self.created = True
            for folder, _, _ in os.walk(self.path):
                clean_stale_temps(folder)
        except BaseException:
            self.lock.release()
            raise

    def begin(self, recipe_text: str) -> None:
        """Record that the run has started (after its checks and any resumed state): status and resolved recipe."""
        if self.main:
            self._status("running")
            atomic_write_text(self.path / RECIPE_FILE, recipe_text)
            self.begun = True

    def commit(self) -> None:
        """Replace `target` with the finished run and release the lock (every process returns when it is done)."""
        from peftkit.training.distributed import main_process_call

        main_process_call(self.accelerator, self._commit)

    def _commit(self) -> None:
        try:
            self._status("complete")
            self._replace()
        finally:
            self.lock.release()

    def abort(self, exc: BaseException) -> PeftkitError | None:
        """After `exc` ended the run: keep `path` (marked failed) if it holds a checkpoint, else remove what this
        run created; release the lock. Returns the PeftkitError to raise instead of `exc` (saying what was kept and
        how to go on), or None to re-raise `exc` (after that note on stderr). Does nothing (None) on a process that
        does not write, or before `open` took the lock."""
        if not self.main or self.lock.fd is None:
            return None
        try:
            checkpoint = latest_checkpoint(self.path) if self.path.exists() else None
            if checkpoint is not None and self.begun:
                self._status("failed", reason=f"{type(exc).__name__}: {shorten(exc, 300)}")
            elif self.created:  # nothing to resume, or only a copy of `target`'s checkpoints
                remove_dir(self.path)
                checkpoint = None
        except OSError:  # a full disk may refuse the status file too; the checkpoint itself is intact
            pass
        finally:
            self.lock.release()
        if checkpoint is not None and not self.begun:  # refused before it changed anything
            kept = f"'{self.path}' is unchanged: its checkpoint {checkpoint.name} can still be resumed."
        elif checkpoint is not None:
            kept = (
                f"The run's checkpoint {checkpoint.name} is kept in '{self.path}': run the same command with "
                f"--resume to continue from it, or with --overwrite to start over."
            )
        elif self.resume:
            kept = f"Nothing was changed: '{self.target}' and its checkpoints are as they were."
        else:
            kept = "Nothing of this run was kept (it had written no checkpoint"
            kept += ")." if self.save_every else ": set train.save_every to checkpoint while training)."
        if self.target.exists() and not self.resume:
            kept += f" The previous run in '{self.target}' is untouched."
        if isinstance(exc, PeftkitError):
            return PeftkitError(f"{exc} {kept}")
        reason = write_failure(exc)
        if reason is not None:
            where = getattr(exc, "filename", None) or self.path
            return PeftkitError(
                f"run '{self.target}': a file could not be written in '{where}': {reason} "
                f"({free_space(self.path)}). {kept}"
            )
        _say(f"the run stopped ({type(exc).__name__}). {kept}")
        return None

    # -- internals ----------------------------------------------------------------------------------------------

    def _status(self, state: str, **extra) -> None:
        owner = _owner()
        owner["updated"] = owner.pop("started")
        atomic_write_json(
            self.path / STATUS_FILE, {"state": state, "target": self.target.name, **owner, **extra}
        )

    def _replace(self) -> None:
        """`target` → aside, `path` → `target`, delete aside: `target` is missing only between two renames, and
        `_recover` finishes the job if a kill lands there."""
        aside = _aside(self.target)
        if self.target.exists():
            os.rename(self.target, aside)
        os.rename(self.path, self.target)
        fsync_dir(self.target.parent)
        remove_dir(aside)

    def _recover(self) -> None:
        """Finish a replacement a kill interrupted, and remove stale temporaries beside the run folder."""
        aside = _aside(self.target)
        complete = read_status(self.path).get("state") == "complete"
        if aside.exists() and not self.target.exists():
            os.rename(self.path if complete else aside, self.target)
            _say(f"finished replacing run folder '{self.target}' (a run was killed while replacing it).")
        elif complete:  # killed after the run finished, before the renames
            self._replace()
            _say(f"finished replacing run folder '{self.target}' (a run was killed while replacing it).")
        remove_dir(aside)
        clean_stale_temps(self.target.parent)


def _ignore_status(folder: str, names: list[str]) -> list[str]:
    return [STATUS_FILE] if STATUS_FILE in names else []


def unfinished_run_message(target: Path) -> str:
    """Why a new run of `target` is refused while an unfinished, resumable one sits beside it."""
    staging = staging_dir(target)
    status, checkpoint = read_status(staging), latest_checkpoint(staging)
    how = f"failed: {status['reason'][:200]}" if status.get("state") == "failed" else "interrupted"
    return (
        f"train.output_dir: '{staging}' holds an unfinished run of '{target}' ({how}) with checkpoint "
        f"{checkpoint.name if checkpoint else '?'}. Continue it with --resume, start over with --overwrite (which "
        f"deletes it), or choose another folder with train.output_dir=PATH."
    )
