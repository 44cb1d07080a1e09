"""Library chatter (transformers' load report, deprecation warnings, progress bars) goes to the run's messages.log,
not the console; peftkit's own warnings still show; the summary names the run folder, the adapter size and the
split its scores come from."""

from __future__ import annotations

import logging
import warnings

from peftkit.cli import main
from peftkit.quiet import MESSAGES_FILE, quiet_libraries
from tests.helpers import write_recipe


def test_library_messages_are_collected_and_peftkit_warnings_shown(capsys, recwarn, caplog):
    import peftkit.quiet as own

    caplog.set_level(logging.WARNING, logger="transformers")  # whatever verbosity an earlier test left behind
    before = logging.getLogger("transformers").handlers[:]
    with quiet_libraries(transformers=False) as messages:
        warnings.simplefilter("always")
        logging.getLogger("transformers.modeling_utils").warning("LOAD REPORT: classifier.weight MISSING")
        logging.getLogger("bitsandbytes.backends.cpu.ops").warning("Failed to load CPU gemm_4bit_forward")
        warnings.warn_explicit("`x` is deprecated", FutureWarning, "/site-packages/transformers/a.py", 1)
        warnings.warn_explicit("about your recipe", UserWarning, own.__file__, 1)
    assert any("LOAD REPORT" in line for line in messages.lines)
    assert any("gemm_4bit_forward" in line for line in messages.lines)
    assert any("FutureWarning: `x` is deprecated" in line for line in messages.lines)
    # peftkit's own warning goes the usual way (here: pytest's recorder), the library's does not
    assert [str(w.message) for w in recwarn] == ["about your recipe"]
    assert not any("about your recipe" in line for line in messages.lines)
    assert "LOAD REPORT" not in capsys.readouterr().err
    assert logging.getLogger("transformers").handlers == before  # restored
    with quiet_libraries(verbose=True, transformers=False) as verbose:
        logging.getLogger("peft").warning("shown as usual")
    assert verbose.lines == []


def test_train_console_is_quiet_and_ends_with_a_summary(tmp_path, tiny_bert, tiny_card, capfd, caplog):
    caplog.set_level(logging.WARNING, logger="transformers")  # a fresh process's verbosity
    recipe = write_recipe(tmp_path / "r.yaml", model=tiny_bert, card=tiny_card, out=tmp_path / "run")
    assert main(["train", str(recipe), "--no-progress"]) == 0
    out, err = capfd.readouterr()
    assert "LOAD REPORT" not in err + out and "MISSING" not in err + out and "Warning" not in err + out
    log = (tmp_path / "run" / MESSAGES_FILE).read_text()
    assert "LOAD REPORT" in log and "classifier.weight" in log
    lines = out.splitlines()
    assert lines[-3] == f"run folder: {tmp_path / 'run'}"
    assert lines[-2].startswith(f"adapter:    {tmp_path / 'run' / 'adapter'} (") and " kB, " in lines[-2]
    assert lines[-1].startswith("test (40 examples): accuracy ")
