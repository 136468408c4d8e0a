"""`make mutate`'s module map: every module and test file it names exists, and a workspace's mutmut settings name
the module alone and its test files (the tool itself runs in `make mutate`, not here)."""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

import mutate  # noqa: E402


def test_every_mapped_module_and_test_file_exists():
    assert list(mutate.MODULES)[:3] == ["data/readers/dicom.py", "data/readers/nifti.py", "data/readers/raster.py"]
    for module, tests in mutate.MODULES.items():
        assert (ROOT / module).is_file(), module
        assert tests, module
        for test in tests:  # a file, or one test of it (`file::name[param]`): the file holds that test function
            path, _, node = test.partition("::")
            assert (ROOT / path).is_file(), (module, test)
            assert not node or f"def {node.split('[')[0]}(" in (ROOT / path).read_text(), (module, test)


def test_workspace_config_mutates_one_module_against_its_tests():
    config = tomllib.loads(mutate.workspace_config("data/dataset.py", mutate.MODULES["data/dataset.py"]))
    mutmut = config["tool"]["mutmut"]
    assert mutmut["only_mutate"] == ["data/dataset.py"]
    assert mutmut["pytest_add_cli_args_test_selection"] == list(mutate.MODULES["data/dataset.py"])
    assert set(mutate.PACKAGES) == set(mutmut["source_paths"]) and "tests" in mutmut["also_copy"]
    assert "work" not in mutmut["also_copy"] and "pyproject.toml" not in mutmut["also_copy"]
    assert config["tool"]["pytest"]["ini_options"]["markers"]
    assert mutate.slug("localize/saliency/m2ib.py") == "localize.saliency.m2ib"
