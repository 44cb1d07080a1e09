"""Training under faults: a failed --overwrite, a full disk, kill -9 in a checkpoint save and in the adapter save,
two writers, damaged checkpoints, folders that are not runs. Each builds the fault, then asserts the message, the
exit code, and that nothing was lost or half-written; a resumed run must end where an uninterrupted one does."""

from __future__ import annotations

import json
import re
import socket
import time

import pytest
from safetensors.torch import load_file

from peftkit.cli import main
from peftkit.recipe import load_recipe
from peftkit.training.loop import TrainCallback
from peftkit.training.recipe import train
from tests.faults.helpers import one_paragraph, snapshot, temporaries


class Interrupted(Exception):
    pass


class FailAt(TrainCallback):
    def __init__(self, step: int):
        self.step = step

    def on_step(self, step: int, loss: float) -> None:
        if step == self.step:
            raise Interrupted(f"stopped at step {step}")


def _cli(argv, capsys) -> tuple[int, str]:
    code = main([*map(str, argv), "--no-progress"])
    return code, capsys.readouterr().err


def _same_adapter(run, reference) -> None:
    a = load_file(str(run / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(reference / "adapter" / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    for name in a:
        assert (a[name] - b[name]).abs().max() <= 1e-6, name


def _losses(run) -> dict:
    rows = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in rows if "loss" in r]
    assert len(steps) == len(set(steps)), "a step was logged twice"
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def _assert_resumed_like(run, reference) -> None:
    _same_adapter(run, reference)
    ours, theirs = _losses(run), _losses(reference)
    assert sorted(ours) == sorted(theirs) == list(range(1, 13))
    for step in theirs:
        assert ours[step] == pytest.approx(theirs[step], abs=1e-6), step


def test_failed_overwrite_leaves_the_old_run_untouched(old_run, make_recipe, capsys):
    before = snapshot(old_run)
    recipe = load_recipe(make_recipe(old_run, train={"learning_rate": 0.02}))
    with pytest.raises(Interrupted):
        train(recipe, overwrite=True, progress=False, callbacks=[FailAt(2)])
    err = capsys.readouterr().err
    assert "Nothing of this run was kept (it had written no checkpoint)" in err
    assert f"The previous run in '{old_run}' is untouched" in err
    assert snapshot(old_run) == before
    assert sorted(p.name for p in old_run.parent.iterdir()) == [
        "run"
    ]  # no partial folder, no lock, no temporaries


def test_failed_overwrite_after_a_checkpoint_is_kept_resumable(old_run, make_recipe, capsys):
    before = snapshot(old_run)
    path = make_recipe(old_run, train={"learning_rate": 0.02})
    with pytest.raises(Interrupted):
        train(load_recipe(path), overwrite=True, progress=False, callbacks=[FailAt(6)])
    partial = old_run.with_name("run.partial")
    assert f"The run's checkpoint step-000004 is kept in '{partial}'" in capsys.readouterr().err
    assert snapshot(old_run) == before
    status = json.loads((partial / "run_status.json").read_text())
    assert status["state"] == "failed" and status["reason"] == "Interrupted: stopped at step 6"
    kept = snapshot(partial)

    code, err = _cli(["train", path], capsys)  # neither --resume nor --overwrite: refused, nothing touched
    assert code == 2
    assert f"'{partial}' holds an unfinished run of '{old_run}' (failed: Interrupted: stopped at step 6)" in (
        one_paragraph(err)
    )
    assert "Continue it with --resume, start over with --overwrite" in err
    assert snapshot(partial) == kept and snapshot(old_run) == before

    code, err = _cli(["train", path, "--resume"], capsys)
    assert code == 0, err
    assert not partial.exists() and sorted(p.name for p in old_run.parent.iterdir()) == ["run"]
    assert "learning_rate: 0.02" in (old_run / "recipe.resolved.yaml").read_text()
    assert json.loads((old_run / "run_status.json").read_text())["state"] == "complete"


@pytest.mark.integration
def test_disk_full_at_a_checkpoint_is_one_paragraph_and_resumable(
    old_run, reference_run, make_recipe, child, capsys
):
    before = snapshot(old_run)
    path = make_recipe(old_run)
    done = child("disk-full-after-checkpoints=1", "train", path, "--overwrite", "--no-progress")
    assert done.returncode == 2, done.stderr[-3000:]
    message = one_paragraph(done.stderr)
    partial = old_run.with_name("run.partial")
    for words in (
        f"checkpoint step-000008 could not be written in '{partial / 'checkpoints'}': File too large",
        "raise it (`ulimit -f unlimited`)",
        "Its partial files were removed; the last complete checkpoint is step-000004.",
        f"The run's checkpoint step-000004 is kept in '{partial}': run the same command with --resume",
        f"The previous run in '{old_run}' is untouched.",
    ):
        assert words in message, (words, message)
    assert snapshot(old_run) == before
    assert sorted(p.name for p in (partial / "checkpoints").iterdir()) == ["step-000004"]
    assert temporaries(partial) == []
    assert json.loads((partial / "run_status.json").read_text())["state"] == "failed"

    code, err = _cli(["train", path, "--resume"], capsys)
    assert code == 0, err
    _assert_resumed_like(old_run, reference_run)


@pytest.mark.slow
def test_disk_full_before_any_checkpoint_keeps_nothing(tmp_path, make_recipe, child):
    out = tmp_path / "runs" / "new"
    done = child("disk-full-after-checkpoints=0", "train", make_recipe(out), "--no-progress")
    assert done.returncode == 2, done.stderr[-3000:]
    message = one_paragraph(done.stderr)
    assert "checkpoint step-000004 could not be written" in message and "File too large" in message
    assert "no earlier checkpoint was written. Nothing of this run was kept" in message
    assert not (tmp_path / "runs").exists() or list((tmp_path / "runs").iterdir()) == []


@pytest.mark.slow
def test_disk_full_at_the_adapter_save(old_run, make_recipe, child):
    before = snapshot(old_run)
    done = child("disk-full-at-adapter", "train", make_recipe(old_run), "--overwrite", "--no-progress")
    assert done.returncode == 2, done.stderr[-3000:]
    message = one_paragraph(done.stderr)
    partial = old_run.with_name("run.partial")
    assert f"run '{old_run}': a file could not be written in '" in message and "File too large" in message
    assert f"The run's checkpoint step-000012 is kept in '{partial}'" in message
    assert snapshot(old_run) == before
    assert not (partial / "adapter").exists() and temporaries(partial) == []


@pytest.mark.integration
def test_kill_9_in_a_checkpoint_save_then_resume(tmp_path, reference_run, make_recipe, child, capsys):
    out = tmp_path / "runs" / "run"
    path = make_recipe(out)
    done = child("kill-in-checkpoint=1", "train", path, "--no-progress")
    assert done.returncode == -9, done.stderr[-3000:]
    partial = out.with_name("run.partial")
    half, complete = sorted(p.name for p in (partial / "checkpoints").iterdir())
    assert complete == "step-000004"
    # the half-written save, under its temporary name (with the writer's pid and host)
    assert re.fullmatch(rf"\.step-000008\.~\d+@{re.escape(socket.gethostname())}~\w+\.tmp", half), half
    assert not out.exists()
    left = snapshot(partial)

    code, err = _cli(["train", path], capsys)
    assert code == 2 and "holds an unfinished run" in one_paragraph(err) and "(interrupted)" in err
    assert snapshot(partial) == left

    code, err = _cli(["train", path, "--resume"], capsys)
    assert code == 0, err
    assert "was left by pid" in err and "taking it over" in err
    assert temporaries(out) == [] and not partial.exists()
    _assert_resumed_like(out, reference_run)


@pytest.mark.slow
def test_kill_9_in_the_adapter_save_then_resume(tmp_path, reference_run, make_recipe, child, capsys):
    out = tmp_path / "runs" / "run"
    path = make_recipe(out)
    done = child("kill-in-adapter-save", "train", path, "--no-progress")
    assert done.returncode == -9, done.stderr[-3000:]
    partial = out.with_name("run.partial")
    assert not (partial / "adapter").exists() and any(partial.glob(".adapter.~*.tmp"))
    code, err = _cli(["train", path, "--resume"], capsys)
    assert code == 0, err
    assert temporaries(out) == []
    _assert_resumed_like(out, reference_run)


@pytest.mark.slow
def test_a_second_writer_is_refused_while_a_run_trains(tmp_path, make_recipe, child, capsys):
    out = tmp_path / "runs" / "run"
    path = make_recipe(out)
    flag = tmp_path / "holding"
    first = child(f"hold-at-checkpoint={flag}", "train", path, "--no-progress", wait=False)
    try:
        for _ in range(600):
            if flag.exists() or first.poll() is not None:
                break
            time.sleep(0.5)
        assert flag.exists(), first.communicate()[1][-3000:]
        before = snapshot(tmp_path / "runs")
        for flags in ([], ["--overwrite"], ["--resume"]):
            code, err = _cli(["train", path, *flags], capsys)
            assert code == 2
            assert (
                f"is being written by another run (pid {first.pid} on {socket.gethostname()}"
                in (one_paragraph(err))
                or "no checkpoint to resume from" in err
            )
        assert snapshot(tmp_path / "runs") == before
    finally:
        first.kill()
        first.communicate()
    # The first run was killed before its first checkpoint: its partial folder holds nothing to resume, so a plain
    # new run removes it and takes over the dead process's lock.
    code, err = _cli(["train", path], capsys)
    assert code == 0, err
    assert "was left by pid" in err
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["run"]


@pytest.mark.parametrize(
    "damage, words",
    [
        ("state.json", "checkpoint '{ckpt}' is damaged: state.json is not the JSON object peftkit writes"),
        ("optimizer.pt", "checkpoint '{ckpt}' is damaged: optimizer.pt cannot be read"),
        ("trainable.safetensors", "checkpoint '{ckpt}' is damaged: trainable.safetensors cannot be read"),
        ("rng.pt-missing", "checkpoint '{ckpt}' is damaged: rng.pt is missing"),
        (
            "all-partial",
            "has no checkpoint to resume from (step-000004, step-000008, step-000012: unfinished",
        ),
    ],
)
def test_resume_refuses_a_damaged_checkpoint_before_writing(old_run, make_recipe, capsys, damage, words):
    ckpt = old_run / "checkpoints" / "step-000012"
    if damage == "rng.pt-missing":
        (ckpt / "rng.pt").unlink()
    elif damage == "all-partial":
        for state in old_run.glob("checkpoints/*/state.json"):
            state.unlink()
    else:
        f = ckpt / damage
        f.write_bytes(f.read_bytes()[: len(f.read_bytes()) // 2])
    (old_run / "recipe.resolved.yaml").write_text("# the recipe the run was started with\n")
    before = snapshot(old_run.parent)
    code, err = _cli(["train", make_recipe(old_run), "--resume"], capsys)
    assert code == 2
    message = one_paragraph(err)
    assert words.format(ckpt=ckpt) in message, message
    if damage != "all-partial":
        assert "Delete that folder to resume from step-000008, or start over with --overwrite" in message
    assert snapshot(old_run.parent) == before, "a refused --resume wrote something"


def test_overwrite_replaces_only_run_folders(tmp_path, make_recipe, capsys):
    mine = tmp_path / "my-data"
    mine.mkdir()
    (mine / "notes.txt").write_text("precious")
    code, err = _cli(["train", make_recipe(mine), "--overwrite"], capsys)
    assert code == 2
    assert f"'{mine}' is not a peftkit run folder (it has no recipe.resolved.yaml)" in one_paragraph(err)
    assert sorted(p.name for p in tmp_path.iterdir() if not p.suffix) == ["my-data"]
    assert (mine / "notes.txt").read_text() == "precious"


@pytest.mark.parametrize("case", ["file", "inside a file", "current folder", "partial name"])
def test_output_dir_that_cannot_be_a_run_folder(tmp_path, make_recipe, capsys, monkeypatch, case):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "taken").write_text("x")
    out, words = {
        "file": (tmp_path / "taken", "is an existing file, not a folder"),
        "inside a file": (tmp_path / "taken" / "run", f"lies inside '{tmp_path / 'taken'}', which is a file"),
        "current folder": (tmp_path, "is the current folder or contains it"),
        "partial name": (
            tmp_path / "run.partial",
            "ends in .partial, the name of an unfinished run's folder",
        ),
    }[case]
    path = make_recipe(out)
    before = snapshot(tmp_path)
    for command in (["validate", path], ["train", path, "--overwrite"]):
        code = main(list(map(str, command)))
        err = capsys.readouterr().err
        assert code == 2 and words in one_paragraph(err), err
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("case", ["card counts", "unknown metric"])
def test_train_refuses_what_validate_refuses(old_run, make_recipe, tiny_card, tmp_path, capsys, case):
    if case == "card counts":
        card = tmp_path / "card" / tiny_card.name
        card.parent.mkdir()
        (card.parent / "tiny.csv").write_bytes((tiny_card.parent / "tiny.csv").read_bytes())
        text = tiny_card.read_text().replace(
            "peftkit:\n", "peftkit:\n  counts: {train: 1, validation: 2, test: 3}\n"
        )
        card.write_text(text)
        path = make_recipe(old_run)
        path.write_text(path.read_text().replace(str(tiny_card), str(card)))
        words = "its counts (train 1, validation 2, test 3) are not what the data gives"
    else:
        path = make_recipe(old_run, eval={"metrics": ["accuracy", "acuracy"]})
        words = "acuracy"
    before = snapshot(old_run.parent)
    for command in (["validate", path], ["train", path, "--overwrite", "--no-progress"]):
        code = main(list(map(str, command)))
        err = capsys.readouterr().err
        assert code == 2 and words in one_paragraph(err), err
    assert snapshot(old_run.parent) == before


def test_ctrl_c_keeps_the_checkpoint_and_says_how_to_go_on(tmp_path, make_recipe, capsys):
    class CtrlC(TrainCallback):
        def on_step(self, step: int, loss: float) -> None:
            if step == 5:
                raise KeyboardInterrupt

    out = tmp_path / "runs" / "run"
    with pytest.raises(KeyboardInterrupt):
        train(load_recipe(make_recipe(out)), progress=False, callbacks=[CtrlC()])
    partial = out.with_name("run.partial")
    assert f"The run's checkpoint step-000004 is kept in '{partial}'" in capsys.readouterr().err
    assert json.loads((partial / "run_status.json").read_text())["reason"].startswith("KeyboardInterrupt")
    assert not out.exists() and not out.with_name(".run.lock").exists()


def test_resume_with_another_recipe_is_refused_and_changes_nothing(tmp_path, make_recipe, capsys):
    out = tmp_path / "runs" / "run"
    path = make_recipe(out)
    with pytest.raises(Interrupted):
        train(load_recipe(path), progress=False, callbacks=[FailAt(6)])
    partial = out.with_name("run.partial")
    before = snapshot(tmp_path / "runs")
    code, err = _cli(["train", path, "--resume", "method.r=4"], capsys)
    assert code == 2
    message = one_paragraph(err)
    assert (
        "does not match this recipe's model" in message and "tensors missing or of another shape" in message
    )
    assert f"'{partial}' is unchanged: its checkpoint step-000004 can still be resumed." in message
    assert snapshot(tmp_path / "runs") == before
