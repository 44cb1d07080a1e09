"""`peftkit train` and `peftkit validate`."""

from __future__ import annotations

import json
import math
from pathlib import Path

from peftkit.cli import add_verbose


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
    add_verbose(t)
    t.set_defaults(handler=cmd_train)

    v = sub.add_parser(
        "validate", help="check a recipe, its data card and model source without loading a model"
    )
    v.add_argument("recipe", help="recipe YAML file")
    v.add_argument(
        "overrides", nargs="*", metavar="key=value", help="override recipe fields, e.g. data.card=my_card.md"
    )
    v.add_argument(
        "--recheck",
        action="store_true",
        help="run every check again, even those that passed before on the same files and versions",
    )
    add_verbose(v)
    v.set_defaults(handler=cmd_validate)


def cmd_train(args) -> int:
    from peftkit.errors import PeftkitError
    from peftkit.quiet import MESSAGES_FILE, quiet_libraries
    from peftkit.recipe import load_recipe
    from peftkit.training.distributed import is_main_launch_process
    from peftkit.training.run_folder import staging_dir

    if args.processes is not None:
        return _launch(args, load_recipe(args.recipe, args.overrides))
    main_process = is_main_launch_process()  # one log and one summary per run, not per process
    with quiet_libraries(args.verbose) as messages:
        recipe = load_recipe(args.recipe, args.overrides)
        assert recipe.train.output_dir is not None  # load_recipe sets it (runs/<recipe file stem>)
        out = Path(recipe.train.output_dir)
        from peftkit.training.recipe import train

        try:
            train(recipe, overwrite=args.overwrite, resume=args.resume, progress=not args.no_progress)
        except PeftkitError:
            raise  # a refusal (or a reported write failure) leaves every folder as it was
        except BaseException:  # a run that can be resumed keeps what the libraries said beside its checkpoint
            if main_process and staging_dir(out).is_dir():
                messages.write(staging_dir(out) / MESSAGES_FILE)
            raise
        if main_process:
            messages.write(out / MESSAGES_FILE)
    if main_process:
        print("\n".join(run_summary(out)))
    return 0


def _launch(args, recipe) -> int:
    """`--processes N`: the same command in N processes through `accelerate launch`."""
    from peftkit.training.distributed import launch_training

    flags = [
        flag
        for flag, on in (
            ("--overwrite", args.overwrite),
            ("--resume", args.resume),
            ("--no-progress", args.no_progress),
            ("--verbose", args.verbose),
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


def run_summary(out: Path) -> list[str]:
    """The lines `peftkit train` ends with: run folder, adapter size, the final split's scores, the best step."""
    from peftkit.adapters.bundle import safetensors_shapes

    metrics = json.loads((out / "metrics.json").read_text())
    adapter = out / "adapter"
    weights = sorted(adapter.glob("*.safetensors"))
    size = sum(p.stat().st_size for p in weights)
    params = sum(math.prod(shape) for p in weights for shape in safetensors_shapes(p).values())
    lines = [f"run folder: {out}", f"adapter:    {adapter} ({_megabytes(size)}, {params:,} parameters)"]
    for split in ("test", "validation"):
        if metrics.get(split):
            scores = metrics[split]
            shown = ", ".join(f"{k} {v:.4f}" for k, v in scores.items() if isinstance(v, float))
            count = f" ({scores['n']:,} examples)" if "n" in scores else ""
            lines.append(f"{split}{count}: {shown}")
            break
    best = metrics.get("best")
    if best:
        kept = "the adapter is from it" if best["kept"] else "the adapter is the last step's"
        stop = f", stopped early at step {best['last_step']}" if best["stopped_early"] else ""
        lines.append(
            f"best:       validation {best['metric']} {best['value']:.4f} at step {best['step']} ({kept}{stop})"
        )
    return lines


def _megabytes(size: int) -> str:
    return f"{size / 1e6:.1f} MB" if size >= 1e5 else f"{size / 1e3:.1f} kB"


def cmd_validate(args) -> int:
    from peftkit.quiet import quiet_libraries
    from peftkit.recipe import load_recipe
    from peftkit.training.preflight import validate_recipe

    with quiet_libraries(args.verbose, transformers=False):
        # The method's settings are checked with the model (or found in the memo): checking them imports PEFT.
        recipe = load_recipe(args.recipe, args.overrides, check_method=False)
        lines = validate_recipe(recipe, use_memo=not args.recheck, recipe_file=args.recipe)
    for line in lines:
        print(line)
    print(f"{args.recipe}: OK")
    return 0
