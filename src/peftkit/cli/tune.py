"""`peftkit tune`: hyperparameter search over a recipe (Optuna; `pip install 'peftkit[tune]'`)."""

from __future__ import annotations

from pathlib import Path

from peftkit.cli import add_verbose
from peftkit.errors import PeftkitError

PRUNERS = ("median", "halving", "none")  # tune.study.PRUNERS, without importing it for --help


def register(sub) -> None:
    """Add this group's subcommands to the `peftkit` parser."""
    t = sub.add_parser(
        "tune",
        help="search a recipe's hyperparameters on its validation split (Optuna): best.yaml, table, plots",
    )
    t.add_argument("recipe", help="recipe YAML file (its settings are the first trial)")
    t.add_argument("overrides", nargs="*", metavar="key=value", help="override recipe fields for every trial")
    t.add_argument(
        "--trials",
        type=int,
        required=True,
        metavar="N",
        help="the study's total of finished trials (a rerun, or another process, adds only what is missing)",
    )
    t.add_argument(
        "--budget", type=int, metavar="EXAMPLES", help="training examples per trial (default: all)"
    )
    t.add_argument(
        "--space",
        metavar="FILE",
        help="YAML that adds, changes or removes (null) search dimensions: `method.r: [4, 8, 16]`, "
        "`train.learning_rate: {low: 1.0e-4, high: 1.0e-2, log: true}`",
    )
    t.add_argument("--study", metavar="NAME", help="study name (default: the recipe's file name)")
    t.add_argument("--output", metavar="DIR", help="study folder (default: tune/<study name>)")
    t.add_argument(
        "--storage",
        metavar="URL",
        help="Optuna storage shared by every process of the study: sqlite:///PATH.db (default: "
        "sqlite:///<study folder>/study.db), journal:PATH, or a database URL (postgresql://…)",
    )
    t.add_argument(
        "--metric", help="validation metric to optimise (default: the recipe's first eval.metrics entry)"
    )
    t.add_argument(
        "--pruner",
        choices=PRUNERS,
        default="median",
        help="stop trials that fall behind at an in-loop validation (default: %(default)s)",
    )
    add_verbose(t)
    t.set_defaults(handler=cmd_tune)


def cmd_tune(args) -> int:
    try:
        import optuna  # noqa: F401
    except ImportError:
        raise PeftkitError(
            "peftkit tune needs Optuna, which is not installed. Install the extra: pip install 'peftkit[tune]'."
        ) from None
    from peftkit.quiet import MESSAGES_FILE, quiet_libraries
    from peftkit.tune.report import write_report
    from peftkit.tune.space import build_space
    from peftkit.tune.study import run_tune

    if args.trials < 0:
        raise PeftkitError(f"--trials: expected 0 or more (0 only writes the report), found {args.trials}.")
    if args.budget is not None and args.budget < 1:
        raise PeftkitError(f"--budget: expected a positive number of training examples, found {args.budget}.")
    name = args.study or Path(args.recipe).stem
    output = Path(args.output or Path("tune") / name)
    storage = args.storage or f"sqlite:///{output / 'study.db'}"
    with quiet_libraries(args.verbose) as messages:  # the libraries' messages go to the study folder
        try:
            space = build_space(args.recipe, args.overrides, args.space)
            study = run_tune(
                args.recipe,
                overrides=args.overrides,
                trials=args.trials,
                budget=args.budget,
                space=space,
                metric=args.metric,
                output=output,
                storage_url=storage,
                study_name=name,
                pruner=args.pruner,
            )
        finally:
            if output.is_dir():
                messages.write(output / MESSAGES_FILE)
    summary = write_report(
        study,
        output,
        recipe_path=args.recipe,
        overrides=args.overrides,
        metric=study.user_attrs["metric"],
        budget=args.budget,
    )
    print((output / "trials.md").read_text().split("\n| trial")[0].rstrip())
    if "best" in summary:
        print(f"best recipe: {output / 'best.yaml'}  (train it: peftkit train {output / 'best.yaml'})")
    print(f"table and plots: {output / 'trials.md'}")
    return 0
