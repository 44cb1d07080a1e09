"""Mixed classification traffic for locust, bounded in users (-u), time (--run-time) and requests.

    locust -f src/peftkit/bench/locustfile.py --headless -u 16 -r 16 --run-time 30s \
        --host http://127.0.0.1:8000 --adapters a00,a01,a02 --max-requests 5000 --texts-per-request 1

Each request names an adapter drawn uniformly from --adapters and carries --texts-per-request texts drawn from
--texts-file (a JSON list; default: a few built-in snippets). A response counts as a failure unless it is 200
with one result per text, each naming the adapter asked for. Adapters listed in --volatile (hot-loaded and
unloaded during a soak) may also answer 404 naming themselves; that counts as a refusal, not a failure.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import gevent
from locust import FastHttpUser, constant_throughput, events, task
from locust.exception import StopUser

SNIPPETS = [
    "a witty, moving film with a sharp script",
    "the plot is dull and the actors look tired",
    "an uneven but often lovely piece of filmmaking",
    "it never finds its footing, and the ending is a mess",
    "one of the most gripping thrillers of the year",
    "a sweet, slight comedy that overstays its welcome",
]


@events.init_command_line_parser.add_listener
def _options(parser):
    parser.add_argument("--adapters", default="", help="comma-separated adapter names to spread traffic over")
    parser.add_argument(
        "--volatile", default="", help="adapters that may be unloaded during the run (404 ok)"
    )
    parser.add_argument("--texts-per-request", type=int, default=1)
    parser.add_argument("--texts-file", default="", help="JSON list of texts to draw from")
    parser.add_argument(
        "--max-requests", type=int, default=0, help="stop after this many requests (0: no limit)"
    )
    parser.add_argument(
        "--rate", type=float, default=0.0, help="requests/s per user (0: as fast as answered)"
    )
    parser.add_argument(
        "--summary-file",
        default="",
        help="write the run's final figures here at exit (JSON: requests sent and finished by the users, "
        "requests and failures recorded, requests/s, p50 and p99 ms)",
    )


@events.quitting.add_listener
def _write_summary(environment, **kwargs):
    """The run's final figures, once every user has stopped. Locust's --csv files are rewritten only once a
    second, so a short run (or a run's last second) can be missing from them. `sent` and `finished` count this
    process's users' requests (a run cut off at --run-time can leave some unfinished: answered by the server,
    never recorded by locust), for the soak's lost/duplicate count."""
    path = environment.parsed_options.summary_file
    if path:
        total = environment.stats.total
        summary = {
            "sent": Classifier.sent,
            "finished": Classifier.finished,
            "requests": total.num_requests,
            "failures": total.num_failures,
            "requests_per_s": total.total_rps,
            "p50_ms": total.get_response_time_percentile(0.5) if total.num_requests else 0,
            "p99_ms": total.get_response_time_percentile(0.99) if total.num_requests else 0,
        }
        Path(path).write_text(json.dumps(summary))


class Classifier(FastHttpUser):
    """One client: POST /v1/classify in a loop."""

    sent = finished = 0  # over all users of this process

    def wait_time(self):
        """0 (closed loop), or paced to --rate requests/s per user (locust's constant_throughput)."""
        return self._pace(self) if self._pace else 0

    def on_start(self):
        opts = self.environment.parsed_options
        self._pace = constant_throughput(opts.rate) if opts.rate > 0 else None
        self.adapters = [a for a in opts.adapters.split(",") if a] + [
            a for a in opts.volatile.split(",") if a
        ]
        self.volatile = {a for a in opts.volatile.split(",") if a}
        self.texts = json.loads(Path(opts.texts_file).read_text()) if opts.texts_file else SNIPPETS
        self.k = opts.texts_per_request
        self.limit = opts.max_requests

    @task
    def classify(self):
        if self.limit and Classifier.sent >= self.limit:
            raise StopUser()  # the user whose answer is the last one ends the run (no request cut off midway)
        Classifier.sent += 1
        try:
            self._post()
        finally:
            Classifier.finished += 1
            if self.limit and Classifier.finished >= self.limit:
                # From its own greenlet: quit() stops every user, and would kill this one halfway through
                # quitting (the run would then go on until --run-time).
                gevent.spawn(self.environment.runner.quit)

    def _post(self):
        adapter = random.choice(self.adapters)
        texts = random.sample(self.texts, self.k)
        with self.client.post(
            "/v1/classify",
            json={"adapter": adapter, "texts": texts},
            catch_response=True,
            name="/v1/classify",
        ) as response:
            if response.status_code == 404 and adapter in self.volatile:
                response.success()  # refused while unloaded: the server's 404 count tells how many
                return
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}: {response.text[:200]}")
                return
            results = response.json().get("results", [])
            if len(results) != len(texts) or any(r.get("adapter", adapter) != adapter for r in results):
                response.failure("wrong number of results or a result from another adapter")
