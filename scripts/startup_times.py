"""Time to the first useful output of `peftkit validate`, `predict` (one text) and `train` (first step) on the
quickstart recipe, each command alone, several times; prints min and median wall and CPU seconds.

    .venv/bin/python scripts/startup_times.py [--repeat 5] [--baseline SRC_DIR]

`--baseline` names another peftkit source tree (e.g. `git archive main | tar -x -C /tmp/main`, then /tmp/main/src)
measured the same way, side by side. The machine's load is printed: on a shared machine, compare medians of runs
made at the same time, not figures from different moments.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from peftkit.training.run_folder import staging_dir

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "minilm-lora-rotten_tomatoes.yaml"
TEXT = "a sharp, witty and moving film"


def run(
    argv: list[str], src: Path, *, until_file: Path | None = None, cache: Path | None = None
) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of `python -m peftkit ARGV` with `src` first on the path: until it exits, or
    until `until_file` has a line (then the process is stopped). `cache`: an empty peftkit cache to start from.
    A training run writes its folder as NAME.partial until it has finished: `until_file` is also looked for
    there."""
    env = {**os.environ, "PYTHONPATH": str(src), "HF_HUB_OFFLINE": "1"}
    if cache is not None:
        shutil.rmtree(cache, ignore_errors=True)
        env["PEFTKIT_CACHE"] = str(cache)
    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "peftkit", *argv],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    if until_file is not None:
        staged = staging_dir(until_file.parent) / until_file.name
        while proc.poll() is None and not (_has_line(until_file) or _has_line(staged)):
            time.sleep(0.05)
        wall = time.perf_counter() - start
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    _, status, usage = os.wait4(proc.pid, 0)
    if until_file is None:
        wall = time.perf_counter() - start
        if status != 0:
            raise SystemExit(f"peftkit {' '.join(argv)} failed:\n{proc.stderr.read().decode()[-2000:]}")
    elif not (_has_line(until_file) or _has_line(staged)):
        raise SystemExit(
            f"peftkit {' '.join(argv)} stopped before its first step:\n{proc.stderr.read().decode()}"
        )
    return wall, usage.ru_utime + usage.ru_stime


def _has_line(path: Path) -> bool:
    return path.is_file() and bool(path.read_text().strip())


def commands(tmp: Path, adapter_run: Path) -> dict:
    """name → (argv, file whose first line ends the measurement or None, empty cache folder or None)."""
    train_dir = tmp / "train-run"
    train = [
        "train",
        str(RECIPE),
        f"train.output_dir={train_dir}",
        "train.log_every=1",
        "train.report_to=none",
        "--overwrite",
        "--no-progress",
    ]
    return {
        "validate": (["validate", str(RECIPE)], None, None),
        "validate, empty cache": (["validate", str(RECIPE)], None, tmp / "empty-cache"),
        "predict (one text)": (["predict", str(adapter_run), TEXT], None, None),
        "train (first step)": (train, train_dir / "train_log.jsonl", None),
    }


def make_adapter(tmp: Path, src: Path) -> Path:
    """A quickstart-shaped adapter (a few steps on a few examples) for `predict` to load."""
    out = tmp / "adapter-run"
    overrides = [
        f"train.output_dir={out}",
        "train.max_steps=2",
        "data.max_train_examples=64",
        "data.max_eval_examples=16",
        "data.max_test_examples=16",
        "train.report_to=none",
    ]
    run(["train", str(RECIPE), *overrides, "--no-progress"], src)
    return out


def _fresh(until: Path | None) -> Path | None:
    """The file that ends a measurement, its run folder (finished or not) removed first."""
    if until is not None:
        shutil.rmtree(until.parent, ignore_errors=True)
        shutil.rmtree(staging_dir(until.parent), ignore_errors=True)
    return until


def line(samples: list[tuple[float, float]]) -> str:
    walls, cpus = [s[0] for s in samples], [s[1] for s in samples]
    return (
        f"{min(walls):6.1f} {statistics.median(walls):6.1f}   {min(cpus):6.1f} {statistics.median(cpus):6.1f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=5, help="runs per command (default 5)")
    parser.add_argument("--baseline", type=Path, help="another peftkit src/ folder to measure side by side")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        adapter_run = make_adapter(tmp, ROOT / "src")
        trees = {"this tree": ROOT / "src"}
        if args.baseline:
            trees = {"baseline": args.baseline.resolve(), **trees}
        # One untimed run of each command fills the OS file cache (and this tree's memo); then the trees take
        # turns run by run, so that both see the same machine load.
        found: dict[str, dict[str, list]] = {label: {} for label in trees}
        started = os.getloadavg()
        for name, (argv, until, cache) in commands(tmp, adapter_run).items():
            for label, src in trees.items():
                found[label][name] = []
                run(argv, src, until_file=_fresh(until), cache=cache)
            for _ in range(args.repeat):
                for label, src in trees.items():
                    found[label][name].append(run(argv, src, until_file=_fresh(until), cache=cache))
    load = os.getloadavg()
    print(
        f"{args.repeat} runs each, {os.cpu_count()} CPUs, 1-minute load average {started[0]:.1f} at the start, "
        f"{load[0]:.1f} at the end"
    )
    print(f"{'':22s} {'':12s} {'wall s':>13s}   {'CPU s':>13s}")
    print(f"{'command':22s} {'tree':12s} {'min':>6s} {'median':>6s}   {'min':>6s} {'median':>6s}")
    for name in found[next(iter(found))]:
        for label in found:
            print(f"{name:22s} {label:12s} {line(found[label][name])}")


if __name__ == "__main__":
    main()
