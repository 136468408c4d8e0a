"""Pytest fixtures for the localize tests: tiny untrained stand-ins written to disk and loaded by the real loaders.

Import the fixtures you use into a test module (``from tests.localize_fixtures import standins, clip, sam``).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from localize.config import anchor_paths
from localize.models import LoadedClip, load_biomedclip, load_sam, write_standins


@pytest.fixture(scope="module")
def standins(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The stand-ins' localize.yaml, parsed (its file paths anchored at its folder, as `localize` reads them), plus
    its own path under key ``path``."""
    path = write_standins(tmp_path_factory.mktemp("standins"))
    return {**anchor_paths(yaml.safe_load(path.read_text()), path.parent), "path": path}


@pytest.fixture(scope="module")
def clip(standins: dict) -> LoadedClip:
    return load_biomedclip(standins["clip"], device="cpu")


@pytest.fixture(scope="module")
def sam(standins: dict):
    return load_sam(standins["sam"], device="cpu")


@pytest.fixture(scope="module")
def clip_dir(standins: dict) -> Path:
    return Path(standins["clip"].removeprefix("local-dir:"))
