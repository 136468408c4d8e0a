"""PNG, JPEG and TIFF files -> frames (a TIFF page each); 16-bit values kept, colour as RGB, alpha dropped."""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator

import numpy as np

from data.readers.common import Frame, UnreadableImage, as_float32, decoding


def raster_frames(path: str | os.PathLike, fmt: str, frame: int | None, modality: str) -> Iterator[Frame]:
    """Every page of a TIFF (or page `frame`), or the one image of a PNG / JPEG."""
    if fmt != "tiff" and frame is not None and frame != 0:
        raise IndexError(f"{path}: frame {frame} out of range (the file has 1 frame)")
    if fmt == "jpeg":
        pages = [_read_jpeg(path)]
    elif fmt == "png":
        pages = [_read_png(path)]
    else:
        pages = _read_tiff(path, frame)
    first = 0 if frame is None else frame
    for offset, pixels in enumerate(pages):
        yield Frame(as_float32(pixels), modality, first + offset, fmt)


def _read_jpeg(path: str | os.PathLike) -> np.ndarray:
    # PIL, not OpenCV: OpenCV returns a grey-padded image for a truncated JPEG, PIL raises.
    from PIL import Image

    with decoding(path, "cannot decode JPEG"), Image.open(path) as image:
        image.load()
        if image.mode not in ("L", "RGB", "I;16", "I", "F"):
            image = image.convert("RGB")  # CMYK, YCbCr, palette, ... -> RGB
        return np.asarray(image)


def _read_png(path: str | os.PathLike) -> np.ndarray:
    import cv2

    with decoding(path, "cannot decode PNG"):
        pixels = cv2.imdecode(np.fromfile(path, dtype=np.uint8), cv2.IMREAD_UNCHANGED)  # keeps 16 bit
    if pixels is None:
        raise UnreadableImage(path, "cannot decode PNG (corrupt or truncated)")
    return _opencv_to_rgb(pixels, path)


def _read_tiff(path: str | os.PathLike, frame: int | None) -> list[np.ndarray]:
    import cv2

    with decoding(path, "cannot decode TIFF"):
        n_pages = _tiff_page_count(path)
        # OpenCV counts the pages it can reach and stops quietly at a broken link; the chain walk above does not.
        if cv2.imcount(str(path), cv2.IMREAD_UNCHANGED) != n_pages:
            raise UnreadableImage(path, "cannot decode TIFF (corrupt or truncated)")
        if frame is not None and frame >= n_pages:
            raise IndexError(f"{path}: frame {frame} out of range (the file has {n_pages} frames)")
        start, count = (0, n_pages) if frame is None else (frame, 1)
        ok, pages = cv2.imreadmulti(str(path), start=start, count=count, flags=cv2.IMREAD_UNCHANGED)
    if not ok or len(pages) != count:
        raise UnreadableImage(path, "cannot decode TIFF (corrupt or truncated)")
    return [_opencv_to_rgb(page, path) for page in pages]


def _tiff_page_count(path: str | os.PathLike) -> int:
    """Pages (image file directories) in a TIFF or BigTIFF, by walking the directory chain from the header.

    Raises UnreadableImage when a directory lies past the end of the file (a truncated file), or the chain loops.
    """
    with open(path, "rb") as fh:
        head = fh.read(16)
        order = {b"II": "<", b"MM": ">"}.get(head[:2])
        magic = struct.unpack(order + "H", head[2:4])[0] if order and len(head) >= 8 else None
        if magic == 42:  # classic TIFF: 2-byte entry count, 12-byte entries, 4-byte offsets
            count_fmt, entry_size, offset_fmt = order + "H", 12, order + "I"
            offset = struct.unpack(offset_fmt, head[4:8])[0]
        elif magic == 43 and len(head) == 16:  # BigTIFF: 8-byte count, 20-byte entries, 8-byte offsets
            count_fmt, entry_size, offset_fmt = order + "Q", 20, order + "Q"
            offset = struct.unpack(offset_fmt, head[8:16])[0]
        else:
            raise UnreadableImage(path, "cannot decode TIFF (no TIFF header)")

        def read(at: int, fmt: str) -> int:
            fh.seek(at)
            raw = fh.read(struct.calcsize(fmt))
            if len(raw) != struct.calcsize(fmt):
                raise UnreadableImage(path, f"truncated TIFF (page {len(seen)}'s directory lies past the end)")
            return struct.unpack(fmt, raw)[0]

        seen: set[int] = set()
        while offset:
            if offset in seen:
                raise UnreadableImage(path, "cannot decode TIFF (its page directories form a loop)")
            seen.add(offset)
            entries_at = offset + struct.calcsize(count_fmt)
            offset = read(entries_at + read(offset, count_fmt) * entry_size, offset_fmt)  # the next directory
    if not seen:
        raise UnreadableImage(path, "cannot decode TIFF (no pages)")
    return len(seen)


def _opencv_to_rgb(pixels: np.ndarray, path: str | os.PathLike) -> np.ndarray:
    """OpenCV's grey / grey+alpha / BGR / BGRA -> grey (H, W) or RGB (H, W, 3); alpha is dropped."""
    if pixels.ndim == 2:
        return pixels
    channels = pixels.shape[2]
    if channels in (1, 2):
        return pixels[..., 0]
    if channels in (3, 4):
        return pixels[..., 2::-1]
    raise UnreadableImage(path, f"unsupported channel count ({channels})")
