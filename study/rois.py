"""ROI sources: where an arm's ROI cache comes from, and the `python -m localize ...` step that makes it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROI_KINDS = ("import", "shuffled", "localize", "cache")


@dataclass(frozen=True)
class RoiSource:
    """Where an arm's ROIs come from: imported masks (`masks`, relative to the corpus), a shuffled control of
    another source (`from_source`, `seed`), `localize run` with a config, or an existing cache (`path`).
    `manifest` (relative to the corpus) limits an import or a localize run to its items (e.g. the control
    corpus's pretraining items, without the test split); `optional` skips the arms of a source whose masks
    folder or localize config is missing, with a note, instead of failing."""

    name: str
    kind: str
    masks: str | None = None
    from_source: str | None = None
    seed: int = 0
    config: str | None = None
    path: str | None = None
    optional: bool = False  # skip the arms that use it when its input is missing (e.g. a corpus without masks)
    manifest: str | None = None

    @classmethod
    def from_dict(cls, name: str, spec: dict[str, Any]) -> RoiSource:
        kind = spec.get("kind")
        if kind not in ROI_KINDS:
            raise ValueError(f"ROI source {name}: kind must be one of {ROI_KINDS}, got {kind!r}")
        return cls(
            name=name,
            kind=kind,
            masks=spec.get("masks"),
            from_source=spec.get("from"),
            seed=int(spec.get("seed", 0)),
            config=spec.get("config"),
            path=spec.get("path"),
            optional=bool(spec.get("optional", False)),
            manifest=spec.get("manifest"),
        )

    def missing_input(self, corpus: Path) -> str | None:
        """Why this source cannot be made here (its masks folder or localize config is missing), or None."""
        if self.kind == "import" and not (corpus / str(self.masks)).is_dir():
            return f"masks folder {corpus / str(self.masks)} not found"
        if self.kind == "localize" and self.config and not Path(self.config).is_file():
            return f"localize config {self.config} not found"
        return None


def roi_command(source: RoiSource, corpus: Path, cache: Path, origin: Path | None = None) -> list[str]:
    """The `python -m` arguments that write `cache` for `source` ('import', 'shuffled' from `origin`, 'localize')."""
    manifest = ["--manifest", str(corpus / source.manifest)] if source.manifest else []
    if source.kind == "import":
        what = ["import", "--masks", str(corpus / str(source.masks)), "--corpus", str(corpus), *manifest]
    elif source.kind == "shuffled":
        what = ["import", "--shuffle-from", str(origin), "--seed", str(source.seed)]
    elif source.kind == "localize":
        what = ["run", "--corpus", str(corpus), *manifest] + (["--config", source.config] if source.config else [])
    else:
        raise ValueError(f"ROI source {source.name}: a {source.kind!r} source has no command")
    return ["localize", *what, "--cache", str(cache), "--no-progress"]
