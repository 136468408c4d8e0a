"""Pseudonymous paths: a private folder of symbolic links named by keyed hashes, used as the corpus root.

`data scan CORPUS --out M --pseudonymous-paths LINKS` scans CORPUS as usual (grouping uses the real paths), then
links every scanned file as LINKS/<token>/<hash><suffix> (`token`: the modality in lower case, so that
path-inferred modalities survive; `hash`: HMAC of the real corpus-relative path under the corpus key) and
rewrites the manifest, failures and exclusions to those paths (item ids follow). Every later phase is pointed
at LINKS as the corpus: caches, checkpoints and results then hold only pseudonyms and can be shared. The map
pseudonym -> real path is LINKS/.path_map.csv (mode 0600; hidden files are never scanned); LINKS itself reveals
the real paths through its links, so it stays on the machine that holds the corpus.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pandas as pd

from data.ids import make_item_id
from data.keys import CorpusKey

PATH_MAP = ".path_map.csv"
_HASH_HEX = 20


def pseudonym(relpath: str, modality: str | None, key: CorpusKey) -> str:
    """The pseudonymous corpus-relative path of the real `relpath`: '<modality>/<keyed hash><suffix>'."""
    name = relpath.rsplit("/", 1)[-1]
    suffix = name[-7:] if name.lower().endswith(".nii.gz") else ("." + name.rsplit(".", 1)[1] if "." in name else "")
    token = (modality or "other").lower()
    return f"{token}/{key.key('path', relpath)[:_HASH_HEX]}{suffix}"


def pseudonymize(
    corpus: str | os.PathLike,
    links: str | os.PathLike,
    key: CorpusKey,
    manifest: pd.DataFrame,
    failures: pd.DataFrame,
    exclusions: pd.DataFrame,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Link every file of the three tables under `links` by its pseudonym, write the private map, and return the
    tables with pseudonymous paths (and the manifest's item ids recomputed from them)."""
    corpus, links = Path(corpus).resolve(), Path(links)
    _clear_previous(links)
    modality = manifest.drop_duplicates("path").set_index("path")["modality"].to_dict()
    real = sorted({*manifest["path"], *failures["path"], *exclusions["path"]})
    mapping = {path: pseudonym(path, modality.get(path), key) for path in real}
    links.mkdir(parents=True, exist_ok=True, mode=0o700)
    for path, alias in mapping.items():
        target = links / alias
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(corpus / path)
    fd = os.open(links / PATH_MAP, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["pseudonym", "path"])
        writer.writerows((alias, path) for path, alias in sorted(mapping.items(), key=lambda kv: kv[1]))

    def renamed(table: pd.DataFrame) -> pd.DataFrame:
        table = table.copy()
        if "reason" in table.columns:  # a reason may quote its file's real path
            table["reason"] = [
                reason.replace(path, mapping[path]) for path, reason in zip(table["path"], table["reason"], strict=True)
            ]
        table["path"] = table["path"].map(mapping)
        return table.sort_values(["path", "frame"] if "frame" in table else "path", kind="stable").reset_index(
            drop=True
        )

    manifest = renamed(manifest)
    manifest["item_id"] = [make_item_id(p, f) for p, f in zip(manifest["path"], manifest["frame"], strict=True)]
    return manifest, renamed(failures), renamed(exclusions)


def read_path_map(links: str | os.PathLike) -> dict[str, str]:
    """pseudonym -> real corpus-relative path, from the private map under `links`."""
    with open(Path(links) / PATH_MAP, newline="") as f:
        return {row["pseudonym"]: row["path"] for row in csv.DictReader(f)}


def _clear_previous(links: Path) -> None:
    """Allow a new or empty folder, or one an earlier run made (its links are removed); refuse anything else."""
    if not links.exists():
        return
    if not links.is_dir():
        raise NotADirectoryError(f"{links}: exists and is not a folder")
    if (links / PATH_MAP).is_file():
        for alias in read_path_map(links):
            if (links / alias).is_symlink():
                (links / alias).unlink()
        (links / PATH_MAP).unlink()
        for folder in sorted((p for p in links.rglob("*") if p.is_dir()), reverse=True):
            if not any(folder.iterdir()):
                folder.rmdir()
    if any(links.iterdir()):
        raise FileExistsError(f"{links}: not empty and not made by --pseudonymous-paths; choose a new folder")
