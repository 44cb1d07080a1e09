"""Run one batch of jobs on the model: classification rows mixed across adapters, or one generation.

Rows of plain LoRA adapters go through the registry's `MixedLoraModel`: cut by length into the forwards that
cost least (`chunks`), each mixing adapters (grouped by adapter inside, so each group is a slice); rows of
other adapters go through their own model, one adapter at a time. Either way
every forward stays within `max_batch_tokens` padded tokens, and each row is read with its own adapter's label
set, exactly as `AdapterSet.predict` reads it.
"""

from __future__ import annotations

import time
from types import SimpleNamespace

import numpy as np

from peftkit.serve.errors import ServeError


def probabilities(logits: np.ndarray) -> np.ndarray:
    """Softmax per row (as `AdapterSet.predict` computes it)."""
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    return probs / probs.sum(-1, keepdims=True)


# The fixed cost of one forward (Python, per-layer small ops), in tokens' worth of compute: MiniLM on 2 CPU cores
# spends about as long on one forward's overhead as on a few dozen tokens.
FORWARD_OVERHEAD_TOKENS = 48


def chunks(rows: list, max_tokens: int, overhead: int = FORWARD_OVERHEAD_TOKENS) -> list[list]:
    """Split (key, ids, ...) rows into forwards: by length, so each pads little, at the least total cost.

    Rows sorted longest first are cut where the sum over forwards of (rows × longest row + `overhead`) is
    smallest (exact, by dynamic programming over cut points), each forward within `max_tokens` padded tokens
    (a row longer than that goes alone). Inside a forward, rows are grouped by key (stable), as the mixed
    LoRA model needs. Rotten Tomatoes snippets padded to their batch's longest take ~1.6x their real tokens;
    cut this way, ~1.1-1.2x.
    """
    ordered = sorted(rows, key=lambda r: -len(r[1]))
    n = len(ordered)
    best = [0.0] + [float("inf")] * n  # best[j]: least cost of the first j rows
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        for i in range(j - 1, -1, -1):  # forward = ordered[i:j], padded to len(ordered[i])
            padded = (j - i) * len(ordered[i][1])
            if padded > max_tokens and i < j - 1:
                break
            cost = best[i] + padded + overhead
            if cost < best[j]:
                best[j], cut[j] = cost, i
    parts, j = [], n
    while j > 0:
        parts.append(sorted(ordered[cut[j] : j], key=lambda r: r[0]))
        j = cut[j]
    return parts[::-1]


def _groups(rows: list) -> list[tuple[object, int, int]]:
    """(key, start, end) for each run of equal keys."""
    groups: list = []
    for i, row in enumerate(rows):
        if groups and groups[-1][0] == row[0]:
            groups[-1][2] = i + 1
        else:
            groups.append([row[0], i, i + 1])
    return [tuple(g) for g in groups]


class BatchRunner:
    """Callable the scheduler's worker runs: jobs in, one answer per job out."""

    def __init__(self, registry, metrics, *, max_batch_tokens: int):
        self.registry = registry
        self.metrics = metrics
        self.max_batch_tokens = max_batch_tokens

    def __call__(self, jobs: list) -> list:
        started = time.perf_counter()
        if jobs[0].generate is not None:
            answers = [self._generate(job) for job in jobs]
        else:
            answers = self._classify(jobs)
            self.metrics.batch_rows.observe(sum(j.texts for j in jobs))
            self.metrics.batch_adapters.observe(len({j.adapter.key for j in jobs}))
            for job in jobs:
                self.metrics.texts.labels(job.adapter.name).inc(job.texts)
        self.metrics.batch_seconds.observe(time.perf_counter() - started)
        return answers

    def _classify(self, jobs: list) -> list:
        from peftkit.data.prepare import collate
        from peftkit.inference.forward import forward_split

        tok = self.registry.tokenizer
        mixed = self.registry.mixed  # one snapshot for the whole batch (hot-loads swap in a new one)
        logits: dict[int, list[np.ndarray | None]] = {id(job): [None] * job.texts for job in jobs}
        routed = [j for j in jobs if mixed is not None and j.adapter.key in mixed.keys]
        # (adapter key, token ids, job, row in job): `chunks` cuts them by length and groups each cut by adapter.
        rows = [(job.adapter.key, ids, job, i) for job in routed for i, ids in enumerate(job.ids)]
        for part in chunks(rows, self.max_batch_tokens):
            batch = collate([r[1] for r in part], tok.pad_token_id, tok.padding_side)
            out = mixed.logits(batch, _groups(part)).float().numpy()
            for row, values in zip(part, out, strict=True):
                logits[id(row[2])][row[3]] = values[: len(row[2].adapter.labels)]
        by_adapter: dict = {}
        routed_ids = {id(j) for j in routed}
        for job in jobs:
            if id(job) not in routed_ids:
                by_adapter.setdefault(job.adapter.key, []).append(job)
        for group in by_adapter.values():
            ids = [x for job in group for x in job.ids]
            out, _ = forward_split(
                group[0].adapter.entry.model,
                ids,
                None,
                pad_token_id=tok.pad_token_id,
                padding_side=tok.padding_side,
                batch_size=max(1, self.max_batch_tokens // max(len(x) for x in ids)),
            )
            start = 0
            for job in group:
                logits[id(job)] = list(out[start : start + job.texts])
                start += job.texts
        return [_answer(job, _stacked(logits[id(job)])) for job in jobs]

    def _generate(self, job) -> dict:
        from peftkit.errors import PeftkitError
        from peftkit.inference.generate import generate_text

        adapter, spec = job.adapter, job.generate
        loaded = SimpleNamespace(
            model=adapter.entry.model, tokenizer=self.registry.tokenizer, meta=adapter.entry.meta
        )
        try:
            text = generate_text(adapter.name, spec["prompt"], loaded=loaded, **spec["options"])
        except PeftkitError as exc:
            raise ServeError(422, str(exc)) from None
        return {"adapter": adapter.name, "fingerprint": adapter.fingerprint, "text": text}


def _stacked(rows: list[np.ndarray | None]) -> np.ndarray:
    """One job's logits, a row per text; every row must have been filled by a forward."""
    filled = [row for row in rows if row is not None]
    if len(filled) != len(rows):
        raise RuntimeError(f"{len(rows) - len(filled)} of a job's {len(rows)} texts got no logits")
    return np.stack(filled)


def _answer(job, logits: np.ndarray) -> list[dict]:
    """Per text: label, probabilities over the adapter's own labels (the top_k highest when asked)."""
    adapter = job.adapter
    labels = adapter.labels
    results = []
    for p in probabilities(logits):
        order = np.argsort(-p, kind="stable")[: job.top_k or len(labels)]
        results.append(
            {
                "label": labels[int(order[0])],
                "probabilities": {labels[int(i)]: round(float(p[i]), 6) for i in order},
                "adapter": adapter.name,
                "fingerprint": adapter.fingerprint,
            }
        )
    return results
