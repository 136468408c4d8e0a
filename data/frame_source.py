"""Frames for a unit of work, each multi-frame file decoded once: the volume-aware reading of `localize` and `pack`.

A `.nii.gz` is one gzip stream: reaching slice k decompresses everything before it, so reading a volume slice by
slice costs about half as many whole decodes as it has slices. A FrameSource is told which frames a unit of work
will read (`plan`, in reading order). The first read of a file whose frames are best decoded together
(`data.readers.decodes_whole`: gzipped NIfTI, compressed DICOM) decodes it once and holds its other planned frames
until they are read; each planned frame is served once (reading it releases it). Files read cheaply frame by frame
(PNG, TIFF pages, memory-mapped .nii, native DICOM), files with one planned frame, and everything when `max_bytes`
is 0, are read with `read_frame`, as item-by-item reading does. Frames are the same either way.

Memory: the frames held never exceed `max_bytes`. A decode keeps the file's remaining planned frames, in plan
order, while they fit, evicting other files' held frames first (least recently decoded first; an evicted frame is
decoded again when read), so a file larger than the cap is decoded once per cap-full of its frames. Decoding needs
the file's own decoded size transiently, beyond the cap.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

from data.ids import decode_relpath
from data.intensity import IntensityConfig, normalize
from data.readers import Frame, UnreadableImage, decodes_whole, iter_frames, normalize_modality, read_frame

DEFAULT_MAX_BYTES = 1 << 30  # 1 GiB of decoded float32 frames per reading process


@dataclass
class ReadStats:
    """What a FrameSource did: whole-file decodes, single-frame reads, frames served from memory, held frames
    evicted unread, and the most bytes held at once (never above `max_bytes`)."""

    max_bytes: int
    file_decodes: int = 0
    frame_reads: int = 0
    held_reads: int = 0
    evictions: int = 0
    peak_bytes: int = 0

    def merge(self, other: ReadStats | dict) -> None:
        """Add another process's counts (peak: the larger of the two)."""
        other = other if isinstance(other, dict) else asdict(other)
        for name in ("file_decodes", "frame_reads", "held_reads", "evictions"):
            setattr(self, name, getattr(self, name) + int(other[name]))
        self.peak_bytes = max(self.peak_bytes, int(other["peak_bytes"]))

    def as_dict(self) -> dict[str, int]:
        return asdict(self)

    def line(self) -> str:
        mib = 1 << 20
        return (
            f"reads: {self.file_decodes} file decodes, {self.frame_reads} single-frame reads, {self.held_reads} "
            f"frames from memory, {self.evictions} evicted; held at most {self.peak_bytes / mib:.1f} MiB "
            f"(cap {self.max_bytes / mib:.0f} MiB per process)"
        )


class FrameSource:
    """Frames of the files under `root` (corpus-relative paths), for reads announced by `plan`.

    max_bytes: cap on the decoded frames held between reads; 0 reads every frame on its own (`read_frame`).
    """

    def __init__(self, root: str | os.PathLike, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.root = Path(root)
        self.max_bytes = int(max_bytes)
        self.stats = ReadStats(self.max_bytes)
        self._planned: dict[str, list[int]] = {}  # relpath -> its planned frames not read yet, in plan order
        self._held: OrderedDict[str, dict[int, Frame]] = OrderedDict()  # least recently decoded first
        self._bytes = 0
        self._whole: dict[str, bool] = {}

    @property
    def bytes_held(self) -> int:
        return self._bytes

    def plan(self, items: Iterable[tuple[str, int]]) -> None:
        """Announce the (relpath, frame) reads of the next unit of work; frames held for an earlier plan are dropped."""
        self._held.clear()
        self._bytes = 0
        self._planned = {}
        for relpath, frame in items:
            self._planned.setdefault(str(relpath), []).append(int(frame))

    def read(self, relpath: str, frame: int, modality: str | None = None) -> Frame:
        """Frame `frame` of `root/relpath`, as `data.readers.read_frame(path, frame, modality=modality)` gives it."""
        frame = int(frame)
        planned = self._planned.get(relpath, [])
        if frame in planned:
            planned.remove(frame)
        held = self._held.get(relpath)
        if held is not None and frame in held:
            found = held.pop(frame)
            self._bytes -= found.pixels.nbytes
            self.stats.held_reads += 1
            return _as_requested(found, modality)
        if self.max_bytes > 0 and planned and self._decodes_whole(relpath):
            found = self._decode(relpath, frame, planned)
            if found is not None:
                return _as_requested(found, modality)
        self.stats.frame_reads += 1
        try:
            return read_frame(self._path(relpath), frame, modality=modality)
        except UnreadableImage as exc:  # name the file by its corpus-relative path: reasons go into caches
            raise UnreadableImage(relpath, exc.reason) from None
        except IndexError as exc:
            raise IndexError(str(exc).replace(str(self.root / relpath), relpath)) from None

    def image(self, relpath: str, frame: int, modality: str | None, intensity: IntensityConfig | None = None):
        """The model-ready image, float32 in [0, 1], as `data.readers.load_image` gives it."""
        found = self.read(relpath, frame, modality)
        # the frame is this call's own (read, or popped from the held ones): normalised in place
        return normalize(found.pixels, found.modality, intensity or IntensityConfig(), overwrite=True)

    def _path(self, relpath: str) -> Path:
        return self.root / decode_relpath(relpath)  # a name that is not UTF-8 is held escaped (data.ids)

    def _decodes_whole(self, relpath: str) -> bool:
        if relpath not in self._whole:
            try:
                self._whole[relpath] = decodes_whole(self._path(relpath))
            except UnreadableImage:
                self._whole[relpath] = False  # read_frame reports the reason, as item-by-item reading does
        return self._whole[relpath]

    def _decode(self, relpath: str, frame: int, planned: list[int]) -> Frame | None:
        """Decode the file once: return `frame`, hold the planned frames that fit. None when the pass fails (the file
        is then read frame by frame, so each item gets the reason or pixels item-by-item reading gives it)."""
        found, kept, keep = None, {}, None
        frames = iter_frames(self._path(relpath))
        try:
            for item in frames:
                if keep is None:  # the frames of a file decoded whole share one size
                    keep = self._room_for(relpath, planned, item.pixels.nbytes)
                if item.frame == frame:
                    found = item
                elif item.frame in keep:
                    kept[item.frame] = item
                if found is not None and len(kept) == len(keep):
                    break
        except UnreadableImage:
            self._whole[relpath] = False
            return None
        finally:
            frames.close()
        self.stats.file_decodes += 1
        if kept:
            self._held.setdefault(relpath, {}).update(kept)
            self._held.move_to_end(relpath)
            self._bytes += sum(f.pixels.nbytes for f in kept.values())
            self.stats.peak_bytes = max(self.stats.peak_bytes, self._bytes)
        return found

    def _room_for(self, relpath: str, planned: list[int], frame_bytes: int) -> set[int]:
        """The planned frames of `relpath` to hold after this decode: as many as fit under the cap, in plan order,
        once other files' held frames are evicted as needed."""
        held = self._held.get(relpath, {})
        candidates = [f for f in planned if f not in held]
        while self._bytes + len(candidates) * frame_bytes > self.max_bytes and self._evict_other(relpath):
            pass
        room = (self.max_bytes - self._bytes) // frame_bytes if frame_bytes else len(candidates)
        return set(candidates[: max(0, min(len(candidates), room))])

    def _evict_other(self, relpath: str) -> bool:
        for other in self._held:
            if other != relpath:
                frames = self._held.pop(other)
                self._bytes -= sum(f.pixels.nbytes for f in frames.values())
                self.stats.evictions += len(frames)
                return True
        return False


def _as_requested(frame: Frame, modality: str | None) -> Frame:
    """A frame decoded without a modality override, as if read with `modality` (it names the frame's modality)."""
    if not modality:
        return frame
    return Frame(frame.pixels, normalize_modality(modality), frame.frame, frame.source_format)
