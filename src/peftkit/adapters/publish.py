"""Publish a run: a self-contained folder ready to upload, or an upload to the Hugging Face Hub.

The folder holds what someone else needs and nothing from this machine: the PEFT adapter files (loadable
with `PeftModel.from_pretrained(base, folder)`), `peftkit_adapter.json`, the adapter card (`README.md`),
`plots/`, the resolved recipe, `metrics.json` and the data card (`data_card.md`). Files that record local
paths (adapter_config.json's `base_model_name_or_path`, peftkit_adapter.json's base source, cache dir and
data card, the recipe's paths) are rewritten to portable names; any other absolute path, in any field of any
published file (`peftkit.adapters.path_leaks`), is refused with the fields listed, and then nothing is written.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from peftkit.adapters.path_leaks import find_absolute_paths
from peftkit.errors import PeftkitError
from peftkit.fileio import atomic_dir, reported_write_failures


def _check_run(run: Path) -> None:
    for rel in (
        "adapter/adapter_config.json",
        "adapter/peftkit_adapter.json",
        "metrics.json",
        "recipe.resolved.yaml",
    ):
        if not (run / rel).is_file():
            raise PeftkitError(
                f"publish: '{run}' is not a finished run folder ({rel} is missing). Pass the folder `peftkit train` "
                f"wrote (train.output_dir), after training has finished."
            )


def _portable_meta(meta: dict) -> dict:
    from peftkit.adapters.card import portable_source

    meta = json.loads(json.dumps(meta))
    meta["base_model"]["source"] = portable_source(meta["base_model"]["source"])
    meta["base_model"]["cache_dir"] = None
    card = meta.get("data_card")
    if card and (card.endswith(".md") or "/" in card):
        meta["data_card"] = Path(card).stem
    return meta


def publish_run(
    run: str | Path, to: str | Path, *, adapter_ref: str | None = None, base_model: str | None = None
) -> Path:
    """Write the self-contained folder `to` for `run`; refuses an existing `to` and any local-path leak.

    `base_model` (a Hub id) names the base in the card metadata and adapter_config.json when the run used a
    local folder or package; without it they hold the run's portable source name.
    """
    from peftkit.adapters.bundle import META_FILE
    from peftkit.adapters.card import CARD_FILE, is_hub_id, portable_recipe, portable_source, render_card
    from peftkit.models.sources import known_hub_id

    run, to = Path(run), Path(to)
    _check_run(run)
    if base_model is not None and not is_hub_id(base_model):
        raise PeftkitError(
            f"publish --base-model: '{base_model}' is not a Hub model id. Write it as ORG/NAME, "
            f"e.g. sentence-transformers/all-MiniLM-L6-v2."
        )
    if to.exists():
        raise PeftkitError(
            f"publish --to: '{to}' already exists; publish never overwrites. Choose a new folder "
            f"or remove the old one first."
        )
    meta = json.loads((run / "adapter" / META_FILE).read_text())
    with reported_write_failures("publish --to", to), atomic_dir(to) as tmp:
        for f in (run / "adapter").iterdir():
            if f.is_file() and f.name not in (CARD_FILE, META_FILE, "adapter_config.json"):
                shutil.copy2(f, tmp / f.name)
        config = json.loads((run / "adapter" / "adapter_config.json").read_text())
        source = meta["base_model"]["source"]  # AutoPeftModel loads the base from here: a Hub id when known
        config["base_model_name_or_path"] = base_model or known_hub_id(source) or portable_source(source)
        (tmp / "adapter_config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        (tmp / META_FILE).write_text(json.dumps(_portable_meta(meta), indent=2, sort_keys=True) + "\n")
        (tmp / "recipe.resolved.yaml").write_text(portable_recipe((run / "recipe.resolved.yaml").read_text()))
        shutil.copy2(run / "metrics.json", tmp / "metrics.json")
        if (run / "plots").is_dir():
            shutil.copytree(run / "plots", tmp / "plots")
        card = _data_card_file(meta.get("data_card"))
        if card is not None:
            shutil.copy2(card, tmp / "data_card.md")
        (tmp / CARD_FILE).write_text(
            render_card(run, adapter_ref=adapter_ref or to.name, plots_prefix="plots/", base_model=base_model)
        )
        leaks = find_absolute_paths(tmp)
        if leaks:
            raise PeftkitError(
                f"publish: refusing to write '{to}': published files would contain absolute paths of this machine "
                f"({'; '.join(leaks[:8])}{f'; … ({len(leaks)} in all)' if len(leaks) > 8 else ''}). Rewrite those "
                f"fields without the path (a name, or a path relative to the data card) where they come from: the "
                f"run's recipe.resolved.yaml (README.md shows the recipe too) or the data card's front matter and "
                f"prose; then publish again. Nothing was written."
            )
    return to


def _data_card_file(ref: str | None) -> Path | None:
    if not ref:
        return None
    try:
        from peftkit.data.cards import find_card

        return find_card(ref)
    except PeftkitError:
        return None


def push_to_hub(
    run: str | Path, repo_id: str, *, base_model: str | None = None, private: bool = False
) -> str:
    """Publish `run` into a temporary folder and upload it to the Hub repo `repo_id`; returns the repo URL."""
    from peftkit.adapters.card import is_hub_id, portable_source
    from peftkit.fileio import hub_offline
    from peftkit.models.sources import known_hub_id

    if hub_offline():
        raise PeftkitError(
            f"publish --hub {repo_id}: this machine is offline (HF_HUB_OFFLINE is set), so nothing can be uploaded. "
            f"Use `peftkit publish RUN --to DIR` and upload DIR from a connected machine "
            f"(`hf upload {repo_id} DIR`)."
        )
    if not is_hub_id(repo_id):
        raise PeftkitError(
            f"publish --hub: '{repo_id}' is not a Hub repo id. Write it as `user/name` or `org/name`."
        )
    _check_run(Path(run))
    source = json.loads((Path(run) / "adapter" / "peftkit_adapter.json").read_text())["base_model"]["source"]
    base = base_model or known_hub_id(source) or portable_source(source)
    if not is_hub_id(base):
        # The Hub rejects a model card whose base_model is not a model id.
        raise PeftkitError(
            f"publish --hub {repo_id}: the run's base model is '{base}', not a Hub model id, and the Hub refuses "
            f"cards whose base_model is not one. Pass --base-model ORG/NAME (the Hub id of the same weights, e.g. "
            f"sentence-transformers/all-MiniLM-L6-v2), or publish with --to DIR."
        )
    from huggingface_hub import HfApi

    with tempfile.TemporaryDirectory() as tmp:
        folder = publish_run(run, Path(tmp) / repo_id.split("/")[1], adapter_ref=repo_id, base_model=base)
        api = HfApi()
        try:
            api.create_repo(repo_id, private=private, exist_ok=True)
            api.upload_folder(
                folder_path=str(folder), repo_id=repo_id, commit_message=f"peftkit publish {Path(run).name}"
            )
        except Exception as exc:  # auth, network and permission errors all need the same advice
            raise PeftkitError(
                f"publish --hub {repo_id}: upload failed ({exc}). Log in with `hf auth login` (or set "
                f"HF_TOKEN) and check that you may write to '{repo_id}'."
            ) from exc
    return f"https://huggingface.co/{repo_id}"
