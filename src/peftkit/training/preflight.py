"""Every check that can run before a weight loads or a file is written, shared by `peftkit validate` and `train`.

`preflight` refuses a recipe for any reason `train` would, in the order a user fixes them: the run folder (its
lock, an unfinished run beside it, the checkpoint --resume would read), the logger, the data card against its
data (checksum and counts), class weights against its labels, the model source and tokenizer, lengths, the
method against the model's layers (on a weightless skeleton) or the adapter to continue (`method.init_from`),
pooling, metric names, early stopping. What it loaded on the way (card, splits, source, config, tokenizer) is
returned so that `train` reads nothing twice. The slow groups (splitting the data; the model and method
checks, which import torch, transformers and PEFT) are skipped by `validate` when they passed before on the
same inputs (`training.preflight_memo`); the heavy libraries are imported only where those groups run.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from peftkit.adapters.bundle import resolve_adapter_dir
from peftkit.data.balance import check_class_weights
from peftkit.data.cards import DataCard, load_card
from peftkit.data.sources import load_columns, verify_checksum
from peftkit.errors import PeftkitError, did_you_mean
from peftkit.inference.metrics import check_metric_names
from peftkit.models.sources import ModelSource, resolve_source
from peftkit.recipe import Recipe
from peftkit.recipe.load import check_recipe_method
from peftkit.training.run_folder import STAGING_SUFFIX, check_can_write

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

SPLITS = ("train", "validation", "test")


@dataclass
class Preflight:
    """What the checks loaded: the card and its splits as columns (`sources.load_columns`; None when the split
    sizes came from the memo), the model source, config and tokenizer (None for a hub source, whose files are
    only read when training downloads them, or when the model checks came from the memo)."""

    card: DataCard
    splits: dict | None
    counts: dict[str, int]
    source: ModelSource
    config: object | None
    tokenizer: PreTrainedTokenizerBase | None
    init_from: Path | None = None
    """The adapter folder `method.init_from` names, checked (None: a new adapter)."""
    remembered: tuple[str, ...] = ()
    """Which check groups ('data', 'model') were taken from the memo instead of run again."""


def preflight(
    recipe: Recipe,
    *,
    overwrite: bool = False,
    resume: bool = False,
    training: bool = True,
    use_memo: bool = False,
    recipe_file: str | None = None,
) -> Preflight:
    """Run every check; raise PeftkitError on the first problem. `training`: also check that the run folder may be
    written (`overwrite` / `resume` as given to `train`). `use_memo`: skip the slow check groups that passed
    before on the very same inputs (`training.preflight_memo`); what passes is recorded either way.
    `recipe_file`: the recipe was loaded with `check_method=False`; check its method settings with the model."""
    from peftkit.training import preflight_memo as memo

    rc, tc = recipe.model, recipe.train
    assert tc.output_dir is not None  # load_recipe sets it (runs/<recipe file stem>)
    check_output_dir(Path(tc.output_dir), overwrite=overwrite, resume=resume, training=training)
    check_report_to(tc.report_to)
    card = load_card(recipe.data.card)
    check_card_task(card, rc.task)
    check_class_weights(tc.class_weights, card.labels, rc.task)
    data_key = memo.data_key(card, verify_checksum(card))
    known = memo.recall(data_key) if use_memo else None
    splits: dict[str, dict[str, list]] | None
    if known:
        splits, counts = None, {name: known["counts"][name] for name in SPLITS}
    else:
        splits = load_columns(card)
        counts = {name: len(splits[name]["text"]) for name in SPLITS}
    check_counts(card, counts)
    if not counts["train"]:
        raise PeftkitError(
            f"data.card: card '{card.name}' gives an empty training split. Check its split settings."
        )
    memo.remember(data_key, {"counts": counts})
    source = resolve_source(rc.source, rc.revision)
    model_key = memo.model_key(recipe, card, source)
    passed = memo.recall(model_key) if use_memo else None
    if passed:
        recipe.method.name = passed["method"]  # what init_from's adapter said, when it was checked
        config = tokenizer = None
        init_from = resolve_adapter_dir(recipe.method.init_from) if recipe.method.init_from else None
    else:
        if recipe_file is not None and not recipe.method.init_from:
            check_recipe_method(recipe, recipe_file)
        config, tokenizer, init_from = check_model(recipe, source, card)
        memo.remember(model_key, {"method": recipe.method.name})
    check_metric_names(recipe.eval.metrics)
    check_early_stopping(recipe)
    remembered = tuple(name for name, hit in (("data", known), ("model", passed)) if hit)
    return Preflight(card, splits, counts, source, config, tokenizer, init_from, remembered)


def check_model(recipe: Recipe, source: ModelSource, card: DataCard):
    """The model source's config and tokenizer, lengths, the method (or the adapter to continue) against the
    model, pooling; returns (config, tokenizer, adapter folder to continue or None)."""
    from peftkit.methods import check_method_settings
    from peftkit.methods.checks import check_method_for_model
    from peftkit.models.load import load_config, load_tokenizer
    from peftkit.models.pooling import check_pooling

    rc, tc = recipe.model, recipe.train
    config = tokenizer = None
    if source.kind != "hub":
        config = load_config(source, rc.cache_dir)
        tokenizer = load_tokenizer(source, rc.cache_dir)  # a decoder with neither pad nor eos is refused here
        check_max_length(recipe.data.max_length, config, rc.source)
    init_from = check_continued_adapter(recipe, source, tokenizer, card) if recipe.method.init_from else None
    settings = recipe.method.settings()
    if config is None or init_from is not None:  # a continued adapter was built on this very model
        check_method_settings(recipe.method.name, settings)
    else:
        check_method_for_model(recipe.method.name, settings, config, rc.task, tc.gradient_checkpointing)
    if config is not None:
        check_pooling(
            rc.pooling, task=rc.task, settings=settings, config=config, source=f"model source '{rc.source}'"
        )
    return config, tokenizer, init_from


def validate_recipe(recipe: Recipe, *, use_memo: bool = False, recipe_file: str | None = None) -> list[str]:
    """`peftkit validate`: raise PeftkitError on the first problem; return lines describing what was checked.
    `use_memo` / `recipe_file`: as for `preflight`."""
    checked = preflight(recipe, training=False, use_memo=use_memo, recipe_file=recipe_file)
    source, card = checked.source, checked.card
    counts = ", ".join(f"{name} {n:,}" for name, n in checked.counts.items())
    earlier = " (as checked before: nothing it depends on changed)"
    return [
        f"data card: {card.name} ({card.path}): {counts}" + (earlier if "data" in checked.remembered else ""),
        f"model source: {source.spec} → {source.kind} {source.path or source.hub_id}",
        f"method: {recipe.method.name}" + (earlier if "model" in checked.remembered else ""),
    ]


def check_continued_adapter(recipe: Recipe, source: ModelSource, tokenizer, card: DataCard) -> Path:
    """Check `method.init_from` against the recipe; the recipe's method name becomes the adapter's."""
    from peftkit.adapters.init_from import check_init_from
    from peftkit.models.load import tokenizer_hash
    from peftkit.models.sources import content_hash

    method = recipe.method
    assert method.init_from is not None  # called only for a recipe that continues an adapter
    adapter_dir, name = check_init_from(
        method.init_from,
        method_name=method.name if "name" in method.model_fields_set else None,
        settings=method.settings(),
        task=recipe.model.task,
        labels=card.labels if recipe.model.task == "classification" else None,
        pooling=recipe.model.pooling,
        base_hash=content_hash(source),
        tok_hash=tokenizer_hash(tokenizer) if tokenizer is not None else None,
    )
    method.name = name
    return adapter_dir


def check_early_stopping(recipe: Recipe) -> None:
    """The watched metric must be one validation gives, and there must be evaluations to watch."""
    tc = recipe.train
    stopping = tc.early_stopping
    if stopping is None:
        return
    if recipe.model.task == "causal_lm":
        known = ["loss", "perplexity"]
    else:
        known = ["loss", "accuracy", "macro_f1", *(Path(m).stem for m in recipe.eval.metrics)]
    if stopping.metric not in known:
        raise PeftkitError(
            f"train.early_stopping.metric: '{stopping.metric}' is not a validation result of this recipe."
            f"{did_you_mean(stopping.metric, known)} Use one of: {', '.join(dict.fromkeys(known))} (add a metric "
            f"to eval.metrics to watch it)."
        )
    if tc.eval_every is None and tc.max_steps is None and tc.epochs <= 1:
        raise PeftkitError(
            f"train.early_stopping: with train.eval_every unset and train.epochs: {tc.epochs:g}, the only "
            f"validation is the final one, so there is nothing to stop early. Set train.eval_every (e.g. 50) to "
            f"evaluate every N steps, or train for more than one epoch."
        )


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
    if not wrong:
        return
    said = ", ".join(f"{name} {card.counts.get(name)}" for name in wrong)
    got = ", ".join(f"{name} {n}" for name, n in wrong.items())
    if card.checksum is None:  # the counts were never proven against any data: not a change, a first check
        raise PeftkitError(
            f"data.card: card '{card.name}' ({card.path}) has no checksum yet, and its counts ({said}) are not "
            f"what the data gives ({got}). Run `peftkit data check {card.path}` and copy the `counts` and "
            f"`checksum` it prints into the card (or remove `counts`)."
        )
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
