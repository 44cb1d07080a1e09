"""`peftkit publish`."""

from __future__ import annotations


def register(sub) -> None:
    """Add this group's subcommands to the `peftkit` parser."""
    pb = sub.add_parser("publish", help="export a run as a self-contained folder, or upload it to the Hub")
    pb.add_argument("run", help="run folder")
    where = pb.add_mutually_exclusive_group(required=True)
    where.add_argument("--to", metavar="DIR", help="new folder to write (must not exist)")
    where.add_argument("--hub", metavar="REPO_ID", help="Hugging Face Hub repo to upload to (needs network)")
    pb.add_argument(
        "--base-model",
        metavar="HUB_ID",
        help="the base's Hub id for the card metadata and "
        "adapter_config.json, when the run used a local folder or package (needed for --hub)",
    )
    pb.set_defaults(handler=cmd_publish)


def cmd_publish(args) -> int:
    from peftkit.adapters.publish import publish_run, push_to_hub

    if args.hub:
        url = push_to_hub(args.run, args.hub, base_model=args.base_model)
        print(f"uploaded {args.run} to {url}")
    else:
        out = publish_run(args.run, args.to, base_model=args.base_model)
        print(f"published {args.run} to {out}:")
        for p in sorted(out.rglob("*")):
            if p.is_file():
                print(f"  {p.relative_to(out)}")
    return 0
