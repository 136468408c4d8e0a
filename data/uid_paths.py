"""Path components that look like identifiers: corpus-relative paths are stored (manifest, ROI cache, failures
table), so folder and file names must not carry identifiers such as a StudyInstanceUID or SOPInstanceUID, a
patient's name, a record or accession number, or a date (`path_warnings` checks all four).

A DICOM UID is dotted digits under an ISO root 0, 1 or 2 (PS3.5 §9), e.g. 1.2.840.113619.2.55.3.604688119;
a component counts as one when it is such digits with at least four parts, or a UUID-derived UID 2.25.<digits>,
optionally followed by a file suffix (.dcm, .nii.gz, ...). Dates (2024.01.15), versions (1.2) and addresses
(192.168.0.1) do not match.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

# four or more dotted parts under root 0/1/2, or a UUID-derived UID (2.25.<the UUID as one integer>)
_UID_COMPONENT = re.compile(r"(?:[0-2](?:\.[0-9]+){3,}|2\.25\.[0-9]{10,})(?:\.[A-Za-z][A-Za-z0-9]*)*")


# A person's name as PACS exports write it: DICOM's 'FAMILY^GIVEN', 'Family, Given', or 'Family_Given' in two
# capitalised words.
_NAME_COMPONENT = re.compile(r"[A-Za-z]+\^[A-Za-z]+|[A-Za-z]{2,}, ?[A-Za-z]{2,}|[A-Z][a-z]+[_ ][A-Z][a-z]+")
# A record or accession number: six or more digits in a row (zero-padded counters, 0000xx, excepted).
_NUMBER_RUN = re.compile(r"(?<![0-9])(?!0000)[0-9]{6,}(?![0-9])")
# A calendar date 19xx/20xx-MM-DD, with or without separators, not inside a longer digit run.
_DATE = re.compile(r"(?<![0-9])(?:19|20)[0-9]{2}([-_.]?)(?:0[1-9]|1[0-2])\1(?:0[1-9]|[12][0-9]|3[01])(?![0-9])")


def looks_like_name(component: str) -> bool:
    """True for a folder or file name that looks like it holds a person's name."""
    return _NAME_COMPONENT.search(component) is not None


def looks_like_record_number(component: str) -> bool:
    """True for a name with six or more digits in a row (an MRN, an accession number), UIDs aside."""
    return not looks_like_uid(component) and _NUMBER_RUN.search(_DATE.sub("", component)) is not None


def looks_like_date(component: str) -> bool:
    """True for a name holding a calendar date (2024-01-15, 20240115, 2024_01_15)."""
    return not looks_like_uid(component) and _DATE.search(component) is not None


def path_warnings(relpaths: Iterable[str]) -> list[str]:
    """Warnings for `relpaths` (POSIX, corpus-relative) with components that look like UIDs, names, record
    numbers or dates: how many paths each, never a path or a value."""
    relpaths = list(relpaths)
    warnings = [w for w in [uid_path_warning(relpaths)] if w]
    checks = (
        ("a person's name", looks_like_name),
        ("a record number (6+ digits)", looks_like_record_number),
        ("a date", looks_like_date),
    )
    for what, check in checks:
        flagged = sum(any(check(part) for part in relpath.split("/")) for relpath in relpaths)
        if flagged:
            warnings.append(
                f"{flagged} of {len(relpaths)} files have a folder or file name that looks like {what}. "
                "Corpus-relative paths are stored in the manifest and the ROI cache: rename them "
                "(e.g. case_0001/series_01/slice_001.dcm) before scanning."
            )
    return warnings


def looks_like_uid(component: str) -> bool:
    """True for a folder or file name that is a DICOM UID (with or without a file suffix)."""
    return _UID_COMPONENT.fullmatch(component) is not None


def uid_path_warning(relpaths: Iterable[str]) -> str | None:
    """A warning naming how many of `relpaths` (POSIX, corpus-relative) hold a UID-like component and what to
    do; None when none does. It never quotes a path or a UID."""
    relpaths = list(relpaths)
    flagged = sum(any(looks_like_uid(part) for part in relpath.split("/")) for relpath in relpaths)
    if not flagged:
        return None
    return (
        f"{flagged} of {len(relpaths)} files have a folder or file name that looks like a DICOM UID (dotted digits, "
        "e.g. a StudyInstanceUID). Corpus-relative paths are stored in the manifest and the ROI cache, so such names "
        "would carry patient-linked identifiers into them: rename those folders/files (e.g. case_0001/, "
        "slice_001.dcm) before scanning."
    )
