"""The manifest: one row per 2-D image of a corpus, and the failures table of the scan that built it.

Row i of the manifest is item i everywhere downstream (ROI cache, datasets), so the manifest is sorted by
(path, frame) and has a RangeIndex. Columns (MANIFEST_COLUMNS):
  item_id        pseudonymous id, `data.ids.make_item_id(path, frame)`
  path           POSIX path of the file, relative to the corpus root
  frame          frame / slice / page index in the file (see `data.readers.Frame`)
  modality       'CT' | 'MR' | 'XR' | 'MG' | 'US' | 'OT'
  height, width  pixel size of the frame
  source_format  'dicom' | 'nifti' | 'png' | 'jpeg' | 'tiff'
and the grouping columns of `data.series.SERIES_COLUMNS` (patient_key, study_key, series_key: keyed hashes, see
`data.keys`; slice_index, slice_position_mm, spacing_mm, n_slices). No value of a DICOM patient or study tag is
stored. Files excluded by the scan's rules (scouts, derived images, screenshots) are listed with their reason in
the exclusions table beside the manifest; `MANIFEST.scan.json` holds the scan summary and the key's fingerprint.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import logging
import os
import sys
from collections import deque
from collections.abc import Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from data.ids import decode_relpath, encode_relpath, make_item_id
from data.keys import CorpusKey, load_or_create_key
from data.readers import NiftiVolumes, UnreadableImage, has_dicm_marker, iter_frames, source_format
from data.readers import infer_modality as infer_modality_from_path
from data.readers.geometry import FileGeometry, dicom_geometry, nifti_geometry
from data.series import SERIES_COLUMNS, FileRows, Grouping, SeriesReport, series_columns
from data.uid_paths import path_warnings

log = logging.getLogger(__name__)

MANIFEST_COLUMNS = ("item_id", "path", "frame", "modality", "height", "width", "source_format")
# A file in the corpus root listing glob patterns of files that are not images to scan (masks, labels, ...).
SCANIGNORE = ".scanignore"
FAILURE_COLUMNS = ("path", "reason")
EXCLUSION_COLUMNS = ("path", "reason")
SCAN_SCHEMA = 2  # 2: + the grouping columns (SERIES_COLUMNS), the exclusions table and MANIFEST.scan.json
_INT_COLUMNS = ("frame", "height", "width")

# One file's scan result: (relpath, [(frame, height, width, modality, source_format), ...], failure reason,
# geometry or None, exclusion reason or None).
_FileResult = tuple[str, list[tuple[int, int, int, str, str]], str | None, FileGeometry | None, str | None]
# One file's scan task: (root, relpath, nifti_volumes, corpus key, keep excluded files).
_Task = tuple[str, str, str, CorpusKey, bool]


@dataclass
class ScanResult:
    """A scan: the manifest, the failures and exclusions tables, the structure report and the key's fingerprint."""

    manifest: pd.DataFrame
    failures: pd.DataFrame
    exclusions: pd.DataFrame
    series: SeriesReport = field(default_factory=SeriesReport)
    key_fingerprint: str = ""
    warnings: list[str] = field(default_factory=list)

    def summary(self) -> dict:
        """The scan summary written to MANIFEST.scan.json (counts only: no identifier, no path)."""
        return {
            "schema": SCAN_SCHEMA,
            "key_fingerprint": self.key_fingerprint,
            "items": len(self.manifest),
            "failures": len(self.failures),
            "exclusions": len(self.exclusions),
            **self.series.as_dict(),
        }


def scan_corpus(
    root: str | os.PathLike,
    *,
    nifti_volumes: NiftiVolumes = "all",
    workers: int | None = None,
    progress: bool = True,
    exclude: Iterable[str | os.PathLike] = (),
    ignore: Iterable[str] = (),
    key: CorpusKey | None = None,
    grouping: Grouping | None = None,
    keep_excluded: bool = False,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(manifest, failures) of `scan_corpus_full` with the same arguments."""
    result = scan_corpus_full(
        root,
        nifti_volumes=nifti_volumes,
        workers=workers,
        progress=progress,
        exclude=exclude,
        ignore=ignore,
        key=key,
        grouping=grouping,
        keep_excluded=keep_excluded,
    )
    return result.manifest, result.failures


def scan_corpus_full(
    root: str | os.PathLike,
    *,
    nifti_volumes: NiftiVolumes = "all",
    workers: int | None = None,
    progress: bool = True,
    exclude: Iterable[str | os.PathLike] = (),
    ignore: Iterable[str] = (),
    key: CorpusKey | None = None,
    grouping: Grouping | None = None,
    keep_excluded: bool = False,
) -> ScanResult:
    """Decode every file under `root` once; return the manifest, failures, exclusions and structure report.

    Every frame is decoded (so a truncated payload is caught) and its pixels dropped; only geometry is kept.
    Skipped: hidden files and folders (name starting with '.'), the paths in `exclude`, and files matching the
    glob patterns in `ignore` or in ROOT/.scanignore (see `list_corpus_files`). A file with an unsupported
    suffix and no DICOM marker is a failure 'unsupported file type (.xyz)'. DICOM scouts, derived or secondary
    images, secondary captures and images with burned-in annotation are excluded with their reason
    (`data.readers.geometry.exclusion_reasons`) unless `keep_excluded`. Grouping keys are hashed with `key`
    (default: `load_or_create_key()`); `grouping` names the patients of files that do not (`data.series`).
    Files are read in `workers` processes (default: all cores; <= 1: in this process); the output order does
    not depend on it. Logs warnings for path components that look like identifiers (`data.uid_paths`).
    """
    root = Path(root)
    if not root.is_dir():
        raise NotADirectoryError(f"{root}: corpus is not a directory")
    key = key if key is not None else load_or_create_key()[0]
    relpaths = list_corpus_files(root, exclude=exclude, ignore=ignore)
    warnings = path_warnings(relpaths)
    for warning in warnings:
        log.warning(warning)
    workers = min(os.cpu_count() or 1, 32) if workers is None else workers
    bar = tqdm(total=len(relpaths), desc="scan", unit="file", file=sys.stderr, disable=not progress)
    tasks = [(str(root), relpath, nifti_volumes, key, keep_excluded) for relpath in relpaths]
    results: list[_FileResult] = []
    with bar:
        if workers <= 1 or len(tasks) <= 1:
            for task in tasks:
                results.append(_scan_file(task))
                bar.update()
        else:
            results = _scan_in_processes(tasks, min(workers, len(tasks)), bar)
    manifest, report = _manifest_frame(results, key, grouping or Grouping())
    exclusions = _table(
        [(relpath, f"excluded: {why}") for relpath, _, _, _, why in results if why is not None], EXCLUSION_COLUMNS
    )
    return ScanResult(manifest, _failures_frame(results), exclusions, report, key.fingerprint, warnings)


def _scan_in_processes(tasks: list[_Task], workers: int, bar: tqdm) -> list[_FileResult]:
    """`_scan_file` over `tasks` in `workers` processes, in chunks of files, results in task order.

    A native decoder can kill its process outright (a segfault in a codec on a corrupt file) instead of raising.
    Then the chunks in flight at that moment are scanned again file by file in a fresh pool, and a single file
    in flight at such a crash is scanned alone in a process of its own: if it kills that one too, it is
    recorded as failed. The other files are unaffected.
    """
    chunk = max(1, min(64, len(tasks) // (workers * 8)))
    queue = deque(list(range(start, min(start + chunk, len(tasks)))) for start in range(0, len(tasks), chunk))
    results: dict[int, _FileResult] = {}
    while queue:
        for indices in _scan_until_crash(tasks, queue, workers, results, bar):
            if len(indices) > 1:
                queue.extendleft([i] for i in reversed(indices))
            else:
                results[indices[0]] = _scan_alone(tasks[indices[0]])
                bar.update()
    return [results[i] for i in range(len(tasks))]


def _scan_until_crash(
    tasks: list[_Task], queue: deque[list[int]], workers: int, results: dict[int, _FileResult], bar: tqdm
) -> list[list[int]]:
    """Scan queued chunks (popped as they are submitted) into `results` until the queue is empty, or until a
    worker dies: then return the chunks that were in flight and have no result."""
    in_flight: dict[Future, list[int]] = {}

    def collect(future: Future) -> None:
        chunk_results = future.result()  # raises BrokenProcessPool before the chunk leaves `in_flight`
        for i, result in zip(in_flight.pop(future), chunk_results, strict=True):
            results[i] = result
            bar.update()

    with ProcessPoolExecutor(max_workers=workers) as pool:
        try:
            while queue or in_flight:
                while queue and len(in_flight) < 2 * workers:  # bounded: a crash leaves few files in doubt
                    indices = queue.popleft()
                    in_flight[pool.submit(_scan_files, [tasks[i] for i in indices])] = indices
                done, _ = wait(in_flight, return_when=FIRST_COMPLETED)
                for future in done:
                    collect(future)
        except BrokenProcessPool:
            for future in [f for f in in_flight if f.done() and f.exception() is None]:
                collect(future)
            return list(in_flight.values())
    return []


def _scan_alone(task: _Task) -> _FileResult:
    """`_scan_file` in a process of its own; a file that kills that process is a failure."""
    with ProcessPoolExecutor(max_workers=1) as pool:
        try:
            return pool.submit(_scan_file, task).result()
        except BrokenProcessPool:
            return task[1], [], "the decoder crashed the reading process", None, None


def list_corpus_files(
    root: str | os.PathLike, exclude: Iterable[str | os.PathLike] = (), ignore: Iterable[str] = ()
) -> list[str]:
    """Sorted POSIX paths, relative to `root`, of the files a scan considers (names that are not valid UTF-8 as
    `data.ids.encode_relpath` stores them; `decode_relpath` gives the name that opens the file).

    Skipped: hidden files and folders, the paths in `exclude`, and what matches a glob pattern of `ignore` or of
    ROOT/.scanignore (one pattern a line, '#' comments). Patterns work like .gitignore's, simplified: a pattern
    with a '/' before its end matches the path from the root, one without matches a name at any depth, and a
    trailing '/' matches folders only: e.g. 'truth/', 'coco/*.json', '*.csv'.
    """
    root = Path(root)
    excluded = {Path(p).resolve() for p in exclude}
    folder_rules, file_rules = [], []
    for pattern in [*ignore, *_read_scanignore(root)]:
        rules = folder_rules if pattern.endswith("/") else file_rules
        pattern = pattern.strip("/") if pattern.endswith("/") else pattern.lstrip("/")
        rules.append((pattern, "/" in pattern))  # (glob, matched against the path rather than the name)
    relpaths = []
    for folder, dirnames, filenames in os.walk(root):
        rel_folder = Path(folder).relative_to(root).as_posix()
        dirnames[:] = [
            name
            for name in dirnames
            if not name.startswith(".") and not _matches(name, _join(rel_folder, name), folder_rules)
        ]
        for name in filenames:
            relpath = _join(rel_folder, name)
            if name.startswith(".") or _matches(name, relpath, file_rules):
                continue
            if not excluded or _resolved(Path(folder) / name) not in excluded:
                relpaths.append(encode_relpath(relpath))  # a name that is not UTF-8: escaped (data.ids)
    return sorted(relpaths)


def _resolved(path: Path) -> Path | None:
    """The file a path names, or None for a symlink loop (the scan records it as a failure, see `iter_frames`)."""
    try:
        return path.resolve()
    except (RuntimeError, OSError):  # RuntimeError: Python < 3.13's 'Symlink loop'
        return None


def _read_scanignore(root: Path) -> list[str]:
    path = root / SCANIGNORE
    if not path.is_file():
        return []
    lines = (line.strip() for line in path.read_text(encoding="utf-8", errors="replace").splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def _join(folder: str, name: str) -> str:
    return name if folder == "." else f"{folder}/{name}"


def _matches(name: str, relpath: str, rules: list[tuple[str, bool]]) -> bool:
    return any(fnmatch.fnmatchcase(relpath if by_path else name, pattern) for pattern, by_path in rules)


def write_manifest(
    manifest: pd.DataFrame,
    failures: pd.DataFrame,
    out: str | os.PathLike,
    *,
    exclusions: pd.DataFrame | None = None,
    summary: dict | None = None,
) -> Path:
    """Write the manifest parquet at `out` and the failures next to it (.failures.parquet and .csv), the
    exclusions (.exclusions.csv) and the scan summary (.scan.json) when given; return `out`.

    The grouping columns (SERIES_COLUMNS) are written when the manifest has them (all of them or none).
    Each file is written to a temporary name first and renamed, so a reader never sees a half-written file.
    """
    out = Path(out)
    _check_columns(manifest, MANIFEST_COLUMNS, "manifest")
    _check_columns(failures, FAILURE_COLUMNS, "failures table")
    columns = list(MANIFEST_COLUMNS) + _series_columns_of(manifest, "manifest")
    out.parent.mkdir(parents=True, exist_ok=True)
    failures_parquet = failures_path(out)
    _replace(out, lambda tmp: manifest.loc[:, columns].to_parquet(tmp, index=False))
    failures = failures.loc[:, list(FAILURE_COLUMNS)]
    _replace(failures_parquet, lambda tmp: failures.to_parquet(tmp, index=False))
    _replace(failures_parquet.with_suffix(".csv"), lambda tmp: failures.to_csv(tmp, index=False))
    if exclusions is not None:
        exclusions = exclusions.loc[:, list(EXCLUSION_COLUMNS)]
        _replace(exclusions_path(out), lambda tmp: exclusions.to_csv(tmp, index=False))
    if summary is not None:
        text = json.dumps(summary, indent=2, sort_keys=True) + "\n"
        _replace(summary_path(out), lambda tmp: tmp.write_text(text))
    return out


def read_manifest(path: str | os.PathLike) -> pd.DataFrame:
    """Read and validate a manifest written by `write_manifest`; errors name the file and what is wrong.

    A manifest from before the grouping columns (schema 1) is read with a warning: code that groups by patient
    then falls back to one patient per path (re-scan to get the keys). One with only some of them is refused.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no manifest there (write one with `python -m data scan CORPUS --out {path}`)")
    try:
        manifest = pd.read_parquet(path)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for a non-parquet file
        raise ValueError(f"{path}: not a readable parquet manifest ({type(exc).__name__})") from exc
    missing = [column for column in MANIFEST_COLUMNS if column not in manifest.columns]
    if missing:
        raise ValueError(f"{path}: not a manifest, missing columns {missing} (expected {list(MANIFEST_COLUMNS)})")
    for column in _INT_COLUMNS:
        if not pd.api.types.is_integer_dtype(manifest[column]):
            raise ValueError(f"{path}: manifest column {column!r} is {manifest[column].dtype}, expected integers")
    if manifest["item_id"].duplicated().any():
        raise ValueError(f"{path}: manifest has duplicate item ids")
    if not _series_columns_of(manifest, str(path)):
        log.warning(
            f"{path}: manifest written before patient/study/series keys (scan schema 1): every path counts as its "
            f"own patient; re-scan the corpus (`python -m data scan`) to group slices by patient and series"
        )
    return manifest.reset_index(drop=True)


def has_grouping_keys(manifest: pd.DataFrame) -> bool:
    """True when `manifest` has the grouping columns (SERIES_COLUMNS) of a schema-2 scan."""
    return all(column in manifest.columns for column in SERIES_COLUMNS)


def _series_columns_of(manifest: pd.DataFrame, what: str) -> list[str]:
    present = [column for column in SERIES_COLUMNS if column in manifest.columns]
    if present and len(present) != len(SERIES_COLUMNS):
        missing = [column for column in SERIES_COLUMNS if column not in present]
        raise ValueError(f"{what}: has some grouping columns but lacks {missing}: a mix of scans; re-scan the corpus")
    return present


def exclusions_path(manifest_path: str | os.PathLike) -> Path:
    """Where `write_manifest` puts the exclusions table (.exclusions.csv) of the manifest at `manifest_path`."""
    manifest_path = Path(manifest_path)
    return manifest_path.with_name(manifest_path.stem + ".exclusions.csv")


def summary_path(manifest_path: str | os.PathLike) -> Path:
    """Where `write_manifest` puts the scan summary (.scan.json) of the manifest at `manifest_path`."""
    manifest_path = Path(manifest_path)
    return manifest_path.with_name(manifest_path.stem + ".scan.json")


def manifest_key_fingerprint(manifest_path: str | os.PathLike) -> str | None:
    """The corpus key fingerprint recorded beside the manifest at `manifest_path` (None: none recorded)."""
    path = summary_path(manifest_path)
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text()).get("key_fingerprint") or None
    except (ValueError, AttributeError):
        return None


def manifest_sha256(manifest: pd.DataFrame) -> str:
    """SHA-256 of a manifest's items in order (item_id, path, frame, modality, height, width): the same for the same
    items in the same order, whether read from a manifest file, a ROI cache or a packed store."""
    columns = [
        manifest[c].astype("int64").astype(str) if c in _INT_COLUMNS else manifest[c].astype(str)
        for c in ("item_id", "path", "frame", "modality", "height", "width")
    ]
    lines = columns[0].str.cat(columns[1:], sep="\t")
    return hashlib.sha256(lines.str.cat(sep="\n").encode()).hexdigest()


def failures_path(manifest_path: str | os.PathLike) -> Path:
    """Where `write_manifest` puts the failures parquet of the manifest at `manifest_path` (the .csv is beside)."""
    manifest_path = Path(manifest_path)
    return manifest_path.with_name(manifest_path.stem + ".failures.parquet")


def _scan_files(tasks: list[_Task]) -> list[_FileResult]:
    return [_scan_file(task) for task in tasks]


def _scan_file(task: _Task) -> _FileResult:
    """Decode one file; its frames' geometry and keys, or the reason it failed or is excluded. Runs in a worker."""
    root, relpath, nifti_volumes, key, keep_excluded = task
    path = Path(root) / decode_relpath(relpath)
    fmt = source_format(path)
    # Non-DICOM files carry no modality: name it from the corpus-relative path, not the root's location.
    modality = None if fmt in (None, "dicom") else infer_modality_from_path(relpath)
    geometry = None
    if fmt == "dicom" or (fmt is None and has_dicm_marker(path)):
        try:  # an unreadable header is the decoder's to report, with its reason
            geometry = dicom_geometry(path, key)
        except Exception:  # noqa: BLE001
            geometry = None
        if geometry is not None and geometry.exclusions and not keep_excluded:
            return relpath, [], None, geometry, "; ".join(geometry.exclusions)
    try:
        frames = [
            (frame.frame, frame.pixels.shape[0], frame.pixels.shape[1], frame.modality, frame.source_format)
            for frame in iter_frames(path, nifti_volumes=nifti_volumes, modality=modality)
        ]
        if frames and frames[0][4] == "nifti":
            geometry = nifti_geometry(path, len(frames))
    except UnreadableImage as exc:
        return relpath, [], _relative_reason(exc.reason, root), None, None
    except Exception as exc:  # noqa: BLE001 - one bad file must not stop the scan
        return relpath, [], f"unexpected error ({type(exc).__name__})", None, None
    if not frames:
        return relpath, [], "no frames", None, None
    return relpath, frames, None, geometry, None


def _relative_reason(reason: str, root: str) -> str:
    """A reason with the corpus root cut out of any path it quotes: failure tables hold no absolute path."""
    prefix = str(Path(root).resolve())
    for candidate in {str(root).rstrip(os.sep), prefix}:
        if candidate and candidate != ".":
            reason = reason.replace(candidate + os.sep, "").replace(candidate, ".")
    return reason


def _manifest_frame(
    results: list[_FileResult], key: CorpusKey, grouping: Grouping
) -> tuple[pd.DataFrame, SeriesReport]:
    rows = [
        (make_item_id(relpath, frame), relpath, frame, modality, height, width, fmt)
        for relpath, frames, _, _, _ in results
        for frame, height, width, modality, fmt in frames
    ]
    manifest = pd.DataFrame(rows, columns=list(MANIFEST_COLUMNS))
    manifest = manifest.astype({column: "int64" for column in _INT_COLUMNS})
    files = [
        FileRows(relpath, frames[0][4], [(f, h, w) for f, h, w, _, _ in frames], geometry)
        for relpath, frames, _, geometry, _ in results
        if frames
    ]
    grouped, report = series_columns(files, key, grouping)
    grouped = grouped.astype({"frame": "int64", "slice_index": "int64", "n_slices": "int64"})
    manifest = manifest.merge(grouped, on=["path", "frame"], how="left", validate="one_to_one")
    manifest = manifest.astype({"slice_position_mm": "float64"})
    return manifest.sort_values(["path", "frame"], kind="stable").reset_index(drop=True), report


def _failures_frame(results: list[_FileResult]) -> pd.DataFrame:
    return _table([(relpath, reason) for relpath, _, reason, _, _ in results if reason is not None], FAILURE_COLUMNS)


def _table(rows: list[tuple[str, str]], columns: tuple[str, ...]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=list(columns)).sort_values("path", kind="stable").reset_index(drop=True)


def _check_columns(table: pd.DataFrame, columns: tuple[str, ...], what: str) -> None:
    missing = [column for column in columns if column not in table.columns]
    if missing:
        raise ValueError(f"{what} lacks columns {missing}")


def _replace(target: Path, write) -> None:
    tmp = target.with_name(f".{target.name}.tmp")
    try:
        write(tmp)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
