"""A `peftkit` command in a child process, with one fault injected: `python child.py FAULT ARGV...`.

FAULT is one of:
- `none`
- `disk-full`: a file size limit (RLIMIT_FSIZE) of 4 KB from the start, as on a full disk
- `disk-full-after-checkpoints=N`: after N checkpoints were written the file size limit (RLIMIT_FSIZE) drops to
  4 KB, as when the disk fills up: the next checkpoint cannot be written
- `disk-full-at-adapter`: the limit drops just before the finished adapter is saved
- `kill-in-checkpoint=N`: SIGKILL (kill -9) halfway through writing checkpoint N+1 (its weights written, its
  optimizer state not)
- `kill-in-adapter-save`: SIGKILL after PEFT wrote the adapter files into their temporary folder
- `kill-in-merge`: SIGKILL after the merged model was written into its temporary folder
- `hold-at-checkpoint=FILE`: at the first checkpoint, touch FILE and wait until killed (a run still writing)
"""

import os
import resource
import signal
import sys
import time
from pathlib import Path


def _kill_self(*_args, **_kwargs):
    os.kill(os.getpid(), signal.SIGKILL)


def _inject(fault: str) -> None:
    name, _, arg = fault.partition("=")
    if name == "none":
        return
    if name == "disk-full":
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.RLIM_INFINITY))
        return
    import peftkit.adapters.bundle as bundle
    import peftkit.training.checkpoints as checkpoints
    import peftkit.training.recipe as recipe

    if name == "disk-full-after-checkpoints":
        save, written = recipe.save_checkpoint, []

        def save_until_full(*args, **kwargs):
            if len(written) == int(arg):
                resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.RLIM_INFINITY))
            save(*args, **kwargs)
            written.append(1)

        recipe.save_checkpoint = save_until_full
    elif name == "disk-full-at-adapter":
        save_adapter = recipe.save_adapter

        def full_then_save(*args, **kwargs):
            resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.RLIM_INFINITY))
            return save_adapter(*args, **kwargs)

        recipe.save_adapter = full_then_save
    elif name == "kill-in-checkpoint":
        torch_bytes, calls = checkpoints._torch_bytes, []

        def killing(obj):
            calls.append(1)
            if len(calls) > 3 * int(arg):  # three torch files (optimizer, scheduler, rng) per checkpoint
                _kill_self()
            return torch_bytes(obj)

        checkpoints._torch_bytes = killing
    elif name == "kill-in-adapter-save":
        bundle.check_adapter_weights = _kill_self
    elif name == "kill-in-merge":
        import peftkit.inference.parity as parity

        parity.run_plain_loaders = _kill_self  # the merge's last step, after the folder was written
    elif name == "hold-at-checkpoint":

        def hold(*args, **kwargs):
            Path(arg).touch()
            time.sleep(600)

        recipe.save_checkpoint = hold
    else:
        raise SystemExit(f"unknown fault {fault!r}")


if __name__ == "__main__":
    _inject(sys.argv[1])
    from peftkit.cli import main

    sys.exit(main(sys.argv[2:]))
