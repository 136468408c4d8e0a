"""No DICOM patient/study value reaches the ROI cache (attributes, arrays, files) or the localize run's output."""

from __future__ import annotations

import logging

import zarr

from localize.__main__ import main as localize_main
from localize.standins import write_standins
from tests.test_privacy_scan import assert_no_planted_value, build_planted_corpus


def test_cache_and_localize_logs_hold_no_planted_value(tmp_path, capfd, caplog):
    corpus = tmp_path / "corpus"
    build_planted_corpus(corpus)
    config = write_standins(tmp_path / "standins")
    capfd.readouterr()
    caplog.clear()
    caplog.set_level(logging.DEBUG)

    code = localize_main(
        [
            "run",
            "--config",
            str(config),
            "--corpus",
            str(corpus),
            "--cache",
            str(tmp_path / "c.zarr"),
            "--workers",
            "0",
            "--set",
            "saliency={method: similarity}",
        ]
    )
    assert code == 0
    out, err = capfd.readouterr()
    assert "done" in out
    assert_no_planted_value(out + err, "localize stdout/stderr")
    assert_no_planted_value("\n".join(r.getMessage() for r in caplog.records), "log records")

    group = zarr.open_group(tmp_path / "c.zarr", mode="r")
    assert group["status"].shape[0] == 2  # the two readable planted files are items
    assert_no_planted_value(str(group.attrs.asdict()), "cache attributes")
    for name in ("item_id", "path", "modality", "reason"):
        assert_no_planted_value(" ".join(map(str, group[name][:])), f"cache array {name}")
    for path in (tmp_path / "c.zarr").rglob("*"):
        if path.is_file():
            assert_no_planted_value(path.read_bytes(), f"cache file {path.name}")
