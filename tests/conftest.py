"""Suite-wide settings: one torch thread per xdist worker; tests marked `gpu` skip without CUDA."""

from __future__ import annotations

import os

import pytest
import torch

if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs one worker per core; more threads per worker oversubscribe the cores (a ResNet-18 step
    # measured 3.5 s with 2 threads vs 0.2 s with 1 on the 2-core CI machine).
    torch.set_num_threads(1)
    # ... and so do the processes a test starts (`python -m pretrain fit`, the demo's steps, dask workers): with
    # torch's default of one thread per core, each would contend with the other worker's tests.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("MKL_NUM_THREADS", "1")


@pytest.fixture(autouse=True, scope="session")
def _corpus_key_file(tmp_path_factory: pytest.TempPathFactory):
    """Scans in tests (and the subprocesses they start) use a session key file, never the user's
    ~/.config/mwm/corpus.key. Its key is fixed: patient keys order the patients that the splits draw, so a random
    key per session (per xdist worker) would give each run other splits."""
    from data.keys import KEY_ENV

    previous = os.environ.get(KEY_ENV)
    path = tmp_path_factory.mktemp("corpus_key") / "corpus.key"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("5eed" * 16 + "\n")  # 32 bytes, a test key: never use a fixed key for a real corpus
    os.environ[KEY_ENV] = str(path)
    yield
    if previous is None:
        os.environ.pop(KEY_ENV, None)
    else:
        os.environ[KEY_ENV] = previous


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # minute-long tests first: with `-n 2`, a long test that starts last leaves the other worker idle at the end
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)  # stable: the rest keep their order
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        # the marker itself: `"gpu" in item.keywords` also matches a test whose folder or file is named gpu
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(skip)
