"""The package layering: data at the bottom, localize and pretrain side by side, finetune and smallmodels (the small
localizer models: pretrain's trainer, models for localize) above them, the study on top."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("data", "localize", "pretrain", "finetune", "smallmodels", "study")
# package -> the project packages it must never import (at any depth, lazily or not)
FORBIDDEN = {
    "data": {"localize", "pretrain", "finetune", "smallmodels", "study"},
    "localize": {"pretrain", "finetune", "smallmodels", "study"},
    "pretrain": {"localize", "finetune", "smallmodels", "study"},
    "finetune": {"localize", "smallmodels", "study"},
    "smallmodels": {"finetune", "study"},
}


def imported_packages(path: Path) -> set[str]:
    """Top-level names of every absolute import in the file, including imports inside functions."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names & set(PACKAGES)


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_import_against_the_layering(package):
    wrong = {
        f"{path.relative_to(ROOT)} imports {name}"
        for path in sorted((ROOT / package).rglob("*.py"))
        for name in imported_packages(path) & FORBIDDEN[package]
    }
    assert not wrong, sorted(wrong)


def test_the_checker_sees_lazy_imports(tmp_path):
    source = tmp_path / "m.py"
    source.write_text("def f():\n    from study.report import write_report\n    import pretrain.cli\n")
    assert imported_packages(source) == {"study", "pretrain"}
