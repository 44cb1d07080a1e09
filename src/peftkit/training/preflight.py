"""Every check that can run before a weight loads or a file is written, shared by `peftkit validate` and `train`.

`preflight` refuses a recipe for any reason `train` would, in the order a user fixes them: the run folder (its
lock, an unfinished run beside it, the checkpoint --resume would read), the logger, the data card against its data
(checksum and counts), the model source and tokenizer, lengths, the method against the model's layers (on a
weightless skeleton), pooling, metric names. What it loaded on the way (card, splits, source, config, tokenizer) is
returned so that `train` reads nothing twice.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from peftkit.data.cards import DataCard, load_card
from peftkit.data.sources import load_splits
from peftkit.errors import PeftkitError
from peftkit.inference.metrics import check_metric_names
from peftkit.methods.checks import check_method_for_model
from peftkit.models.load import load_config, load_tokenizer
from peftkit.models.pooling import check_pooling
from peftkit.models.sources import ModelSource, resolve_source
from peftkit.recipe import Recipe
from peftkit.training.run_folder import STAGING_SUFFIX, check_can_write

SPLITS = ("train", "validation", "test")


@dataclass
class Preflight:
    """What the checks loaded: the card and its splits, the model source, config and tokenizer (None for a hub
    source, whose files are only read when training downloads them)."""

    card: DataCard
    splits: dict
    source: ModelSource
    config: object | None
    tokenizer: object | None


def preflight(
    recipe: Recipe, *, overwrite: bool = False, resume: bool = False, training: bool = True
) -> Preflight:
    """Run every check; raise PeftkitError on the first problem. `training`: also check that the run folder may be
    written (`overwrite` / `resume` as given to `train`)."""
    rc, tc = recipe.model, recipe.train
    check_output_dir(Path(tc.output_dir), overwrite=overwrite, resume=resume, training=training)
    check_report_to(tc.report_to)
    card = load_card(recipe.data.card)
    check_card_task(card, rc.task)
    splits = load_splits(card)
    check_counts(card, {name: len(splits[name]) for name in SPLITS})
    if not len(splits["train"]):
        raise PeftkitError(
            f"data.card: card '{card.name}' gives an empty training split. Check its split settings."
        )
    source = resolve_source(rc.source, rc.revision)
    config = tokenizer = None
    if source.kind != "hub":
        config = load_config(source, rc.cache_dir)
        tokenizer = load_tokenizer(source, rc.cache_dir)  # a decoder with neither pad nor eos is refused here
        check_max_length(recipe.data.max_length, config, rc.source)
        settings = recipe.method.settings()
        check_method_for_model(recipe.method.name, settings, config, rc.task, tc.gradient_checkpointing)
        check_pooling(
            rc.pooling, task=rc.task, settings=settings, config=config, source=f"model source '{rc.source}'"
        )
    check_metric_names(recipe.eval.metrics)
    return Preflight(card, splits, source, config, tokenizer)


def validate_recipe(recipe: Recipe) -> list[str]:
    """`peftkit validate`: raise PeftkitError on the first problem; return lines describing what was checked."""
    checked = preflight(recipe, training=False)
    source, card = checked.source, checked.card
    counts = ", ".join(f"{name} {len(checked.splits[name]):,}" for name in SPLITS)
    return [
        f"data card: {card.name} ({card.path}): {counts}",
        f"model source: {source.spec} → {source.kind} {source.path or source.hub_id}",
        f"method: {recipe.method.name}",
    ]


def check_output_dir(out: Path, *, overwrite: bool, resume: bool, training: bool = True) -> None:
    """The run folder must be a folder of its own (or not exist yet); when training, this run must be allowed to
    write it in its current state (`training.run_folder.check_can_write`)."""
    if out.exists() and not out.is_dir():
        raise PeftkitError(
            f"train.output_dir: '{out}' is an existing file, not a folder. Choose another run folder with "
            f"train.output_dir=PATH, or move the file away."
        )
    blocking = next((p for p in out.parents if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        raise PeftkitError(
            f"train.output_dir: '{out}' lies inside '{blocking}', which is a file, not a folder. Choose another "
            f"run folder with train.output_dir=PATH."
        )
    here = Path.cwd().resolve()
    if out.resolve() == here or out.resolve() in here.parents:
        raise PeftkitError(
            f"train.output_dir: '{out}' is the current folder or contains it; a run replaces its folder as a "
            f"whole, so it needs one of its own. Set train.output_dir to a new folder, e.g. runs/NAME."
        )
    if out.name.endswith(STAGING_SUFFIX):
        raise PeftkitError(
            f"train.output_dir: '{out}' ends in {STAGING_SUFFIX}, the name of an unfinished run's folder. To continue "
            f"that run, set train.output_dir={out.with_name(out.name.removesuffix(STAGING_SUFFIX))} and pass "
            f"--resume; otherwise choose another name."
        )
    if training:
        check_can_write(out, overwrite=overwrite, resume=resume)


def check_report_to(report_to: str) -> None:
    """Refuse a logger whose package is missing before the run folder is touched."""
    if report_to not in ("auto", "none") and importlib.util.find_spec(report_to) is None:
        raise PeftkitError(
            f"train.report_to: '{report_to}' needs the `{report_to}` package, which is not installed. "
            f"Install it (pip install {report_to}) or set train.report_to=auto or none."
        )


def check_card_task(card: DataCard, task: str) -> None:
    """The data card must be made for the recipe's task (a labelled card is not a causal-LM corpus, nor back)."""
    if card.task == task:
        return
    fix = (
        "A causal-LM card has `task: causal_lm` in its `peftkit:` block and names only a text column: use one "
        "(e.g. rotten_tomatoes_text), or write one pointing at the same data file"
        if task == "causal_lm"
        else "Use a classification card (with labels)"
    )
    raise PeftkitError(
        f"data.card: card '{card.name}' ({card.path}) is a {card.task} card but model.task is {task}. {fix}; "
        f"or set model.task: {card.task}."
    )


def check_counts(card: DataCard, found: dict[str, int]) -> None:
    """The split sizes must be the card's `counts` (when it lists them): other sizes mean other data."""
    if card.counts is None:
        return
    wrong = {name: n for name, n in found.items() if card.counts.get(name) != n}
    if wrong:
        said = ", ".join(f"{name} {card.counts.get(name)}" for name in wrong)
        got = ", ".join(f"{name} {n}" for name, n in wrong.items())
        raise PeftkitError(
            f"data.card: the data no longer matches card '{card.name}' ({card.path}): the card's counts say "
            f"{said}, the data gives {got}. Run `peftkit data check {card.name}` and update `counts` (and "
            f"`checksum`) if the new data is what you want."
        )


def check_max_length(max_length: int, config, source_spec: str) -> None:
    """`data.max_length` must fit the model's position embeddings."""
    limit = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    if limit and max_length > limit:
        raise PeftkitError(
            f"data.max_length: {max_length} is above the model's limit of {limit} positions ({source_spec}). "
            f"Set data.max_length to {limit} or less."
        )
