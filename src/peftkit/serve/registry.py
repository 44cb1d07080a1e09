"""The served adapters: load at start, hot-load and unload while requests run, and refuse what does not fit.

Every check runs before an adapter becomes visible, and any failure refuses it with the reason (fail closed):
- a bad name (422), a name already in use (409), a path outside `adapter_root` (403);
- a missing, truncated or altered bundle (422), a plain PEFT adapter without a fingerprint (422 unless
  `allow_unchecked`);
- a base model, tokenizer, task or pooling other than the loaded one's (409, expected vs found);
- target modules that match no layer of the base, or weights that do not land in it (422): such an adapter
  would answer as the bare base.

A request holds its `ServedAdapter` from lookup to answer, so unloading (or replacing) an adapter never drops
or misroutes a request already accepted: it is answered by the adapter it was accepted for. Plain LoRA
adapters also join one `MixedLoraModel` (rebuilt on every change, swapped in as a whole) so a batch that mixes
them takes one forward; the others run on their own models.
"""

from __future__ import annotations

import hashlib
import itertools
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from peftkit.errors import PeftkitError
from peftkit.serve.errors import ServeError
from peftkit.serve.settings import check_adapter_name

if TYPE_CHECKING:  # imported where used: they import torch
    from peftkit.inference.adapter_set import SwapEntry
    from peftkit.inference.mixed_batch import MixedLoraModel

CARD_MAX_CHARS = 20_000


@dataclass
class ServedAdapter:
    """One loaded adapter as requests see it. `key` is unique for the server's life (names can be reused)."""

    key: int
    name: str
    entry: SwapEntry
    fingerprint: str
    routed: bool
    loaded_at: float = field(default_factory=time.time)

    @property
    def labels(self) -> list[str] | None:
        return self.entry.labels

    @property
    def task(self) -> str:
        return self.entry.meta["task"]

    @property
    def max_length(self) -> int:
        return int(self.entry.meta.get("max_length", 512))

    def describe(self, *, card: bool = True) -> dict:
        """The JSON form shown by GET /v1/adapters and the page."""
        meta = self.entry.meta
        out = {
            "name": self.name,
            "fingerprint": self.fingerprint,
            "task": self.task,
            "labels": self.labels,
            "method": meta.get("method"),
            "max_length": self.max_length,
            "path": str(self.entry.path),
            "mixed_batching": self.routed,
        }
        if card:
            readme = Path(self.entry.path) / "README.md"
            out["card"] = readme.read_text(errors="replace")[:CARD_MAX_CHARS] if readme.is_file() else None
        return out


def adapter_fingerprint(meta: dict, adapter_dir: Path) -> str:
    """`sha256:<hex>` of the adapter's weights: the weight file's own sha256 when there is one file (so
    `sha256sum adapter_model.safetensors` checks it), else the hash of the sorted per-file hashes."""
    from peftkit.adapters.bundle import file_sha256

    files = meta.get("files") or {p.name: file_sha256(p) for p in sorted(adapter_dir.glob("*.safetensors"))}
    if len(files) == 1:
        return next(iter(files.values()))
    return "sha256:" + hashlib.sha256(repr(sorted(files.items())).encode()).hexdigest()


class AdapterRegistry:
    """The loaded adapters of one server, on one base (an `AdapterSet`), safe to change while serving."""

    def __init__(self, base: str | None = None, *, adapter_root: str | None = None, allow_unchecked=False):
        from peftkit.inference.adapter_set import AdapterSet

        self.adapter_set = AdapterSet(base)
        self.adapter_root = Path(adapter_root).resolve() if adapter_root else None
        self.allow_unchecked = allow_unchecked
        self._served: dict[str, ServedAdapter] = {}
        self._keys = itertools.count(1)
        self._lock = threading.Lock()  # one load/unload at a time; lookups never wait for it
        self.mixed: MixedLoraModel | None = None  # over the routed adapters; None when none is routed

    @property
    def tokenizer(self):
        return self.adapter_set.tokenizer

    @property
    def task(self) -> str | None:
        return self.adapter_set.task

    @property
    def base_spec(self) -> str | None:
        return getattr(self.adapter_set, "base_spec", None)

    def names(self) -> list[str]:
        return list(self._served)

    def adapters(self) -> list[ServedAdapter]:
        return list(self._served.values())

    def get(self, name: str) -> ServedAdapter:
        """The adapter serving `name`, or 404 naming the loaded ones (never a fallback to the base)."""
        served = self._served.get(name)
        if served is None:
            loaded = ", ".join(self._served) or "none"
            raise ServeError(
                404,
                f"adapter {str(name)[:80]!r} is not loaded (loaded: {loaded}). Name one of them, or load it "
                f'with POST /v1/adapters {{"name": ..., "path": ...}}.',
            )
        return served

    def load(self, name: str, path: str, *, rebuild: bool = True) -> ServedAdapter:
        """Check and load the adapter at `path` as `name`; visible to requests only once fully loaded."""
        check_adapter_name(name)
        with self._lock:
            if name in self._served:
                raise ServeError(
                    409,
                    f"adapter name '{name}' is already loaded (from {self._served[name].entry.path}). Unload it "
                    f"first (DELETE /v1/adapters/{name}) or choose another name.",
                )
            adapter_dir = self._check_path(name, path)
            entry = self._add_to_set(name, adapter_dir)
            served = ServedAdapter(
                next(self._keys), name, entry, adapter_fingerprint(entry.meta, entry.path), routed=False
            )
            served.routed = self._routable(served)
            self._served[name] = served
            if rebuild:
                self._rebuild_mixed()
            return served

    def load_many(self, adapters: dict[str, str]) -> None:
        """Load the start-up adapters, building the mixed-batch model once at the end."""
        for name, path in adapters.items():
            self.load(name, path, rebuild=False)
        with self._lock:
            self._rebuild_mixed()

    def unload(self, name: str, *, only: ServedAdapter | None = None) -> ServedAdapter | None:
        """Stop routing new requests to `name`; requests already holding it are still answered by it.

        `only`: unload only if `name` is still this very adapter (not one loaded again under the same name).
        """
        with self._lock:
            if only is not None and self._served.get(name) is not only:
                return None
            served = self.get(name)
            del self._served[name]
            self.adapter_set.remove(name)
            self._rebuild_mixed()
        return served

    # -- checks --------------------------------------------------------------------------------------------------

    def _check_path(self, name: str, path: str) -> Path:
        from peftkit.adapters.bundle import check_bundle, resolve_adapter_dir

        if not isinstance(path, str) or not path:
            raise ServeError(422, f"adapter '{name}': 'path' must be a run folder or adapter folder.")
        if self.adapter_root is not None and not Path(path).resolve().is_relative_to(self.adapter_root):
            raise ServeError(
                403,
                f"adapter '{name}': path '{path[:200]}' is outside the server's adapter root "
                f"({self.adapter_root}). Copy the adapter under it, or start the server with another "
                f"--adapter-root.",
            )
        try:
            adapter_dir = resolve_adapter_dir(path)
            meta, _ = check_bundle(adapter_dir)
        except PeftkitError as exc:
            raise ServeError(422, str(exc)) from None
        if meta is None and not self.allow_unchecked:
            raise ServeError(
                422,
                f"adapter '{name}' ({adapter_dir}) is a plain PEFT adapter without peftkit_adapter.json, so its "
                f"base model and tokenizer cannot be checked against the served base. Serve adapters trained "
                f"with peftkit, or start the server with --allow-unchecked.",
            )
        return adapter_dir

    def _add_to_set(self, name: str, adapter_dir: Path) -> SwapEntry:
        from peftkit.inference.adapter_set import AdapterMismatch

        try:
            return self.adapter_set.add(name, adapter_dir, allow_unverified=self.allow_unchecked)
        except AdapterMismatch as exc:  # another base, tokenizer, task or pooling: a conflict with the server
            raise ServeError(409, f"adapter '{name}' refused: {exc}") from None
        except PeftkitError as exc:  # target modules or weights that do not land on this base, bad labels
            raise ServeError(422, f"adapter '{name}' refused: {exc}") from None

    def _routable(self, served: ServedAdapter) -> bool:
        from peftkit.inference.mixed_batch import routable_reason

        return served.task == "classification" and routable_reason(served.entry.model, "default") is None

    def _rebuild_mixed(self) -> None:
        from peftkit.inference.mixed_batch import MixedLoraModel

        routed = {s.key: (s.entry.model, "default") for s in self._served.values() if s.routed}
        self.mixed = MixedLoraModel(self.adapter_set.base, routed) if routed else None
