"""One writer per run folder: `.NAME.lock` beside it, held with flock(2), naming its owner (pid, host, start,
command).

The kernel releases a flock when its process dies, however it dies: a lock file that can be locked again was left by
a dead process, which is said and taken over. A lock recorded by another machine cannot be checked from here (on a
shared file system); it is reported with how to remove it.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path

from peftkit.errors import PeftkitError


def say(message: str) -> None:
    """A note on stderr (something the user should know that is not an error)."""
    print(f"peftkit: note: {message}", file=sys.stderr)


def writer_info() -> dict:
    """Who is writing: this process's pid, host, the time and its command line."""
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
            say(
                f"run folder lock {self.path} was left by pid {previous.get('pid')} "
                f"({previous.get('command', '?')[:80]}), which is no longer running; taking it over."
            )
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(writer_info()) + "\n").encode(), 0)
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
