"""`peftkit validate`: everything `train` checks before loading weights — data card, data, model source,
method settings, lengths — without loading a model."""

from __future__ import annotations

from peftkit.errors import PeftkitError
from peftkit.recipe import Recipe


def validate_recipe(recipe: Recipe) -> list[str]:
    """Raise PeftkitError on the first problem; return a few lines describing what was checked."""
    from peftkit.data.cards import load_card
    from peftkit.data.sources import check_card
    from peftkit.inference.metrics import check_metric_names
    from peftkit.methods.checks import check_method_for_model
    from peftkit.models.load import load_config, load_tokenizer
    from peftkit.models.pooling import check_pooling
    from peftkit.models.sources import resolve_source
    from peftkit.training.recipe import _check_max_length, check_card_task, check_report_to

    card = load_card(recipe.data.card)
    check_card_task(card, recipe.model.task)
    problems = check_card(card)
    if problems:
        raise PeftkitError(
            f"data.card: the data no longer matches card '{card.name}' ({card.path}): "
            + "; ".join(problems)
            + ". Run `peftkit data check` for details."
        )
    source = resolve_source(recipe.model.source, recipe.model.revision)
    config = load_config(source, recipe.model.cache_dir) if source.kind != "hub" else None
    if config is not None:
        load_tokenizer(source, recipe.model.cache_dir)  # a decoder with neither pad nor eos is refused here
        _check_max_length(recipe.data.max_length, config, recipe.model.source)
        check_method_for_model(
            recipe.method.name,
            recipe.method.settings(),
            config,
            recipe.model.task,
            recipe.train.gradient_checkpointing,
        )
        check_pooling(
            recipe.model.pooling,
            task=recipe.model.task,
            settings=recipe.method.settings(),
            config=config,
            source=f"model source '{recipe.model.source}'",
        )
    check_metric_names(recipe.eval.metrics)
    check_report_to(recipe.train.report_to)
    return [
        f"data card: {card.name} ({card.path})",
        f"model source: {source.spec} → {source.kind} {source.path or source.hub_id}",
        f"method: {recipe.method.name}",
    ]
