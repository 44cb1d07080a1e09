"""Serving: `serve` (many adapters on one base over HTTP)."""

from __future__ import annotations

import time

from peftkit.errors import PeftkitError


def register(sub) -> None:
    """Add this group's subcommands to the `peftkit` parser."""
    s = sub.add_parser(
        "serve",
        help="serve many adapters on one base over HTTP (FastAPI): /v1/classify, /v1/generate, /v1/adapters, "
        "/metrics, a page at /",
        description="Serve adapters on one base model, batched across requests. Settings come from --config "
        "(YAML) and the flags (flags win). See docs/serving.md.",
    )
    s.add_argument(
        "--config", help="YAML file of settings (keys as the flags, with _ for -; adapters: {NAME: PATH})"
    )
    s.add_argument("--base", help="base model source (default: the base recorded by the first adapter)")
    s.add_argument(
        "--adapter",
        dest="named",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="an adapter to serve (run folder or adapter folder); repeat for more",
    )
    s.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    s.add_argument("--port", type=int, help="TCP port (default 8000; 0 picks a free one)")
    s.add_argument("--max-batch-tokens", type=int, help="largest batch in padded tokens (default 4096)")
    s.add_argument("--max-wait-ms", type=float, help="how long a request may wait for a batch (default 5)")
    s.add_argument("--max-queue-texts", type=int, help="texts allowed to wait before 429 (default 1024)")
    s.add_argument("--max-texts-per-request", type=int, help="texts per /v1/classify request (default 64)")
    s.add_argument("--max-chars-per-text", type=int, help="characters per text (default 4000)")
    s.add_argument("--max-new-tokens", type=int, help="tokens per /v1/generate request (default 256)")
    s.add_argument("--adapter-root", help="hot-loaded adapter paths must lie inside this folder")
    s.add_argument(
        "--allow-unchecked",
        action="store_const",
        const=True,
        help="serve plain PEFT adapters without a peftkit fingerprint (not checked against the base)",
    )
    s.add_argument(
        "--drain-seconds", type=float, help="on SIGTERM, time allowed to finish requests (default 30)"
    )
    s.add_argument("--threads", type=int, help="torch threads (default: one per core)")
    s.set_defaults(handler=cmd_serve)


def cmd_serve(args) -> int:
    started = time.perf_counter()
    from peftkit.inference.adapter_set import parse_adapter_specs
    from peftkit.serve.server import run_server
    from peftkit.serve.settings import load_settings

    pairs = parse_adapter_specs(args.named)
    names = [name for name, _ in pairs]
    if len(set(names)) != len(names):
        raise PeftkitError(
            f"--adapter: a name is given twice ({', '.join(names)}). Give each adapter its own name."
        )
    flags = {
        key: getattr(args, key)
        for key in (
            "base",
            "host",
            "port",
            "max_batch_tokens",
            "max_wait_ms",
            "max_queue_texts",
            "max_texts_per_request",
            "max_chars_per_text",
            "max_new_tokens",
            "adapter_root",
            "allow_unchecked",
            "drain_seconds",
            "threads",
        )
    }
    settings = load_settings(args.config, {**flags, "adapters": dict(pairs)})
    return run_server(settings, started=started)
