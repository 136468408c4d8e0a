"""Path components that look like DICOM UIDs: corpus-relative paths are stored (manifest, ROI cache, failures
table), so folder and file names must not carry identifiers such as a StudyInstanceUID or SOPInstanceUID.

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
