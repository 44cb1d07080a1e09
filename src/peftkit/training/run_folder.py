"""A run folder is a transaction with one writer: a run replaces an earlier one only after it succeeds.

A run never writes into its target folder `NAME/`. It trains in `NAME.partial/` beside it and, once everything
(checkpoints, log, adapter, metrics, plots, card) is written, replaces `NAME/` with it by renames. So:

- a run that fails or is killed leaves `NAME/` exactly as it was;
- it keeps `NAME.partial/` only when that holds a complete checkpoint to resume from (`run_status.json` there says
  `failed` and why); otherwise `NAME.partial/` is removed (or, after a kill, removed by the next run);
- `--resume` continues `NAME.partial/`, or, when there is none, a copy of `NAME/` (a finished run trained further);
- `.NAME.lock` beside the folder admits one writer (`training.run_lock`: flock, naming its owner). A lock
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
from peftkit.training.checkpoints import check_checkpoint, latest_checkpoint
from peftkit.training.run_lock import RunLock, say, writer_info

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


def check_can_write(target: Path, *, overwrite: bool, resume: bool) -> None:
    """Refuse (PeftkitError, nothing written) a run that may not write `target` as it is now: another run holds its
    lock; a non-empty folder without --overwrite or --resume, or one that is not a run folder; an unfinished run
    beside it without --resume or --overwrite (checkpoints are never discarded silently); --resume without a
    complete, readable checkpoint written with this process count (`checkpoints.check_checkpoint`)."""
    # Only the main process of a launch takes the lock (`RunFolder.open`); another process checking it could find
    # it already held by its own main process.
    from peftkit.training.distributed import is_main_launch_process

    if is_main_launch_process():
        RunLock(target).check()
    staging = staging_dir(target)
    if staging.exists() and not staging.is_dir():
        raise PeftkitError(
            f"train.output_dir: '{staging}' is a file, and a run of '{target}' writes into that name until it has "
            f"finished. Move the file away, or choose another train.output_dir."
        )
    if resume:
        source = resume_source(target) or (staging if any(staging.glob("checkpoints/step-*")) else target)
        check_checkpoint(source, processes=int(os.environ.get("WORLD_SIZE", "1")))
        return
    if latest_checkpoint(staging) is not None and not overwrite:
        raise PeftkitError(unfinished_run_message(target))
    if target.exists() and any(target.iterdir()):
        if not overwrite:
            raise PeftkitError(
                f"train.output_dir: run folder '{target}' already exists and is not empty. Pass --overwrite to "
                f"replace it (once the new run has succeeded), --resume to continue it, or choose another folder "
                f"with train.output_dir=PATH."
            )
        if not is_run_folder(target):
            raise PeftkitError(
                f"train.output_dir: '{target}' is not a peftkit run folder (it has no {RECIPE_FILE}), and "
                f"--overwrite replaces only run folders, so its files stay. Choose another folder with "
                f"train.output_dir=PATH, or move its files away."
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
                    # preflight refused this already; an unfinished run may have appeared since
                    if latest_checkpoint(self.path) is not None and not self.overwrite:
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
        checkpoint = None
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
        if not getattr(exc, "quiet", False):
            say(f"the run stopped ({type(exc).__name__}). {kept}")
        return None

    # -- internals ----------------------------------------------------------------------------------------------

    def _status(self, state: str, **extra) -> None:
        writer = writer_info()
        writer["updated"] = writer.pop("started")
        atomic_write_json(
            self.path / STATUS_FILE, {"state": state, "target": self.target.name, **writer, **extra}
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
            if complete:
                say(f"finished replacing run folder '{self.target}' (a run was killed while replacing it).")
            else:
                say(f"restored the previous run in '{self.target}' (a run was killed while replacing it).")
        elif complete:  # killed after the run finished, before the renames
            self._replace()
            say(f"finished replacing run folder '{self.target}' (a run was killed while replacing it).")
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
