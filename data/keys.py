"""The corpus secret and the keyed grouping keys (patient, study, series) derived from it.

A grouping key is HMAC-SHA256(secret, "<kind>\\0<value>") in hex, truncated to KEY_HEX digits: equal values give
equal keys under one secret, and without the secret nobody can test a guessed PatientID or UID against a
manifest (a plain hash of a guessed ID could be matched; a keyed one cannot).

The secret is 32 random bytes, hex in a key file that the first scan creates with mode 0600 (`load_or_create_key`)
at `--key-file`, else $MWM_KEY_FILE, else ~/.config/mwm/corpus.key, outside the corpus and outside the
manifest's folder so that sharing a manifest or a cache never shares the key. Later scans reuse it, so keys are
stable across runs. The manifest records only the key's fingerprint (an HMAC of a fixed string), which tells a
scan made with another key apart but reveals nothing about any identifier. A lost key cannot be recovered: a new
key gives new, unrelated keys, so every manifest, cache and split made with the old one must be remade together.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import stat
from dataclasses import dataclass, field
from pathlib import Path

KEY_ENV = "MWM_KEY_FILE"
KEY_BYTES = 32
KEY_HEX = 32  # 128 bits of the HMAC: collisions between real identifiers are out of reach
FINGERPRINT_HEX = 16


def default_key_file() -> Path:
    """$MWM_KEY_FILE, else ~/.config/mwm/corpus.key."""
    env = os.environ.get(KEY_ENV)
    return Path(env).expanduser() if env else Path.home() / ".config" / "mwm" / "corpus.key"


@dataclass(frozen=True)
class CorpusKey:
    """The secret of a corpus; `key(kind, value)` is the keyed hash of one identifier. repr never shows it."""

    secret: bytes = field(repr=False)

    def key(self, kind: str, value: str) -> str:
        """Hex HMAC-SHA256 of `value` under the secret, domain-separated by `kind` ('patient', 'study', ...)."""
        message = f"{kind}\0{value}".encode("utf-8", "surrogateescape")
        return hmac.new(self.secret, message, hashlib.sha256).hexdigest()[:KEY_HEX]

    @property
    def fingerprint(self) -> str:
        """A public fingerprint of the secret (an HMAC of a fixed string): equal for equal secrets only."""
        return hmac.new(self.secret, b"mwm-key-fingerprint", hashlib.sha256).hexdigest()[:FINGERPRINT_HEX]


def load_or_create_key(path: str | os.PathLike | None = None) -> tuple[CorpusKey, bool]:
    """(the key in the file at `path` (default `default_key_file()`), whether it was created now).

    A missing file is created with mode 0600 (exclusively: two scans starting together agree on one key).
    Raises ValueError naming the file when it does not hold a key, PermissionError when others can read it.
    """
    path = Path(path).expanduser() if path is not None else default_key_file()
    created = False
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # another scan created it a moment ago: use that one
        else:
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(KEY_BYTES) + "\n")
            created = True
    if os.name == "posix" and path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise PermissionError(f"{path}: corpus key file is readable by others; run `chmod 600 {path}`")
    text = path.read_text(encoding="ascii", errors="replace").strip()
    try:
        secret = bytes.fromhex(text)
    except ValueError:
        secret = b""
    if len(secret) < 16:
        raise ValueError(f"{path}: not a corpus key file (expected {2 * KEY_BYTES} hex digits)")
    return CorpusKey(secret), created
