"""The benchmarks run at toy sizes, print one JSON object, and their baselines do the same work as the fast paths.

Timings here mean nothing (2 shared cores, tiny inputs); these tests keep the benchmark scripts working and check
the equalities each benchmark's ratio rests on. The localization and pretraining-step benches are run (once) by the
GPU run's dry run, and their equalities checked there (tests/test_bench_gpu.py).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_bench(script: str, *args: str) -> dict:
    done = subprocess.run(
        [sys.executable, f"bench/{script}", *args], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def test_cache_io_bench_reads_what_zarr_reads():
    result = run_bench(
        "cache_io.py", "--items", "40", "--mask-size", "32", "--image-size", "64", "--batch", "16", "--reads", "100"
    )
    assert result["reads_equal_zarr"] is True and result["reads_compared"] == 100
    assert result["items"] == 40 and result["store_files"] > 0
    assert result["reads_per_s"] > 0 and result["writes_per_s"] > 0


def test_loader_bench_reads_the_same_images_both_ways(tmp_path):
    result = run_bench("loader.py", "--small", "--work", str(tmp_path))
    assert set(result["corpora"]) == {"nifti_gz", "dicom_rle", "sample"}
    for name, figures in result["corpora"].items():
        # the packed loader serves the raw loader's batch: same items, same ROIs, pixels within uint8 rounding
        assert figures["rois_equal"] is True and figures["packed_max_abs_diff"] <= 0.5 / 255 + 1e-6, name
        assert figures["raw_images_per_s"] > 0 and figures["packed_images_per_s"] > 0 and figures["bytes_per_image"] > 0
        # 2.5-D input from the square store: its centre channel is the 2-D loader's image
        assert figures["square_2_5d_centre_equal"] is True and figures["packed_square_2_5d_images_per_s"] > 0, name
    assert result["corpora"]["nifti_gz"]["items"] == 2 * 8 and result["corpora"]["dicom_rle"]["items"] == 8
    local = result["localize"]
    assert local["caches_equal"] is True and local["items"] == 16
    # the volume-aware run decoded each volume once (one shard) and served the other slices from memory
    assert local["volume_aware_reads"]["file_decodes"] == 2 and local["volume_aware_reads"]["held_reads"] == 14
    assert local["aware_time_vs_png"] > 0 and local["item_by_item_items_per_s"] > 0


def test_reference_benches_skip_without_the_reference_code(tmp_path, monkeypatch):
    """With a folder lacking the reference's files both benches say why and exit 0 (without any folder: the GPU
    dry run, tests/test_bench_gpu.py)."""
    monkeypatch.delenv("SPARK_DIR", raising=False)
    monkeypatch.delenv("M2IB_REF_DIR", raising=False)
    assert "no spark.py" in run_bench("spark_reference.py", "--spark-dir", str(tmp_path))["skipped"]
    assert "no scripts/iba.py" in run_bench("m2ib_reference.py", "--ref-dir", str(tmp_path))["skipped"]


def test_spark_reference_maps_every_weight_to_sparks_name():
    """Our names -> SparK's (spark.py / decoder.py attribute names); a wrong block index would pair up weights
    of different shapes, which `copy_into_reference` refuses."""
    sys.path.insert(0, str(REPO))
    from bench.spark_reference import reference_name
    from pretrain.spark import SparkMIM

    names = SparkMIM("resnet18", input_size=64, decoder_width=32).state_dict().keys()
    mapped = {reference_name(n) for n in names}
    assert len(mapped) == len(names)  # one to one
    assert reference_name("encoder.model.layer1.0.conv1.weight") == "sparse_encoder.sp_cnn.layer1.0.conv1.weight"
    assert reference_name("decoder.blocks.2.0.weight") == "dense_decoder.dec.2.up_sample.weight"
    assert reference_name("decoder.blocks.2.1.weight") == "dense_decoder.dec.2.conv.0.weight"
    assert reference_name("decoder.blocks.2.5.running_var") == "dense_decoder.dec.2.conv.4.running_var"
    assert reference_name("decoder.proj.bias") == "dense_decoder.proj.bias"
    assert reference_name("densify.mask_tokens.3") == "mask_tokens.3"
    assert reference_name("densify.projs.0.weight") == "densify_projs.0.weight"
    assert reference_name("densify.norms.1.running_mean") == "densify_norms.1.running_mean"
