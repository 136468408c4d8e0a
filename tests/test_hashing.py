"""The one file-hash helper (data.hashing) and the digests built on it."""

from __future__ import annotations

import hashlib

from data.hashing import CHUNK_BYTES, file_sha256
from localize.import_masks import mask_digest

# FIPS 180-2, appendix B.1: SHA-256("abc")
ABC_SHA256 = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_published_vector_and_prefix(tmp_path):
    path = tmp_path / "abc.bin"
    path.write_bytes(b"abc")
    assert file_sha256(path) == ABC_SHA256
    assert file_sha256(path, length=16) == ABC_SHA256[:16]


def test_files_longer_than_one_chunk_hash_whole(tmp_path):
    # a chunk boundary inside the file: a helper that hashed only the first or last chunk would differ
    data = bytes(range(256)) * (CHUNK_BYTES // 256) + b"tail"
    path = tmp_path / "big.bin"
    path.write_bytes(data)
    assert file_sha256(path) == hashlib.sha256(data).hexdigest()


def test_mask_digest_is_unchanged_by_streaming(tmp_path):
    # the digest recorded in existing caches' provenance: SHA-256 over name + NUL + bytes of each file, sorted
    (tmp_path / "b.png").write_bytes(b"second")
    (tmp_path / "a.png").write_bytes(b"first")
    expected = hashlib.sha256(b"a.png\0first" + b"b.png\0second").hexdigest()
    assert mask_digest(tmp_path, ["b", "a", "missing"]) == (expected, 2)
