"""`peftkit train` and `peftkit validate`."""

from __future__ import annotations

import json
import os


def register(sub) -> None:
    """Add this group's subcommands to the `peftkit` parser."""
    t = sub.add_parser("train", help="train a recipe into a run folder")
    t.add_argument("recipe", help="recipe YAML file")
    t.add_argument(
        "overrides", nargs="*", metavar="key=value", help="override recipe fields, e.g. train.epochs=2"
    )
    t.add_argument("--overwrite", action="store_true", help="replace an existing run folder")
    t.add_argument("--resume", action="store_true", help="continue from the run folder's latest checkpoint")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.add_argument(
        "--processes",
        type=int,
        metavar="N",
        help="train with N processes (GPUs, or CPU cores without a "
        "GPU) through `accelerate launch`; strategy from the recipe's distributed section",
    )
    t.set_defaults(handler=cmd_train)

    v = sub.add_parser(
        "validate", help="check a recipe, its data card and model source without loading a model"
    )
    v.add_argument("recipe")
    v.add_argument("overrides", nargs="*", metavar="key=value")
    v.set_defaults(handler=cmd_validate)


def cmd_train(args) -> int:
    from peftkit.recipe import load_recipe

    recipe = load_recipe(args.recipe, args.overrides)
    if args.processes is not None:
        from peftkit.training.distributed import launch_training

        flags = [
            f
            for f, on in (
                ("--overwrite", args.overwrite),
                ("--resume", args.resume),
                ("--no-progress", args.no_progress),
            )
            if on
        ]
        return launch_training(
            args.recipe,
            [*args.overrides, *flags],
            args.processes,
            strategy=recipe.distributed.strategy,
            accelerate_config=recipe.distributed.accelerate_config,
            quantized=recipe.quantization is not None,
        )
    from peftkit.training.recipe import train

    out = train(recipe, overwrite=args.overwrite, resume=args.resume, progress=not args.no_progress)
    if int(os.environ.get("RANK", "0")) != 0:  # one summary per run, not per process
        return 0
    metrics = json.loads((out / "metrics.json").read_text())
    test = metrics.get("test") or metrics.get("validation") or {}
    shown = ", ".join(f"{k} {v:.4f}" for k, v in test.items() if isinstance(v, float))
    print(f"run folder: {out}\n{shown}")
    return 0


def cmd_validate(args) -> int:
    from peftkit.recipe import load_recipe

    recipe = load_recipe(args.recipe, args.overrides)
    from peftkit.training.preflight import validate_recipe

    for line in validate_recipe(recipe):
        print(line)
    print(f"{args.recipe}: OK")
    return 0
