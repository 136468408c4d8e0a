"""Installed like a library, run like a tool: version ranges + constraints, the `mwm` command, shipped configs found
from any folder, config-relative paths, a non-editable install into a fresh venv."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from configs import resolve_config, resolve_config_args, shipped_dir
from localize.config import LocalizeConfig
from localize.prompts import PromptConfig
from mwm.cli import PHASES, main

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def constraints() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, version = line.split("==")
            pins[name.lower().replace("_", "-")] = version
    return pins


# ---------------------------------------------------------------------------------------------- item 1
def test_pyproject_states_ranges_and_constraints_pin_a_version_inside_each():
    pins = constraints()
    project = PYPROJECT["project"]
    requirements = [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["dev"]]
    for req in requirements:
        name = req.name.lower().replace("_", "-")
        assert not any(s.operator == "==" for s in req.specifier), (
            f"{req}: a range in pyproject, the pin in constraints"
        )
        assert name in pins, f"{req.name} has no exact version in constraints.txt"
        assert req.specifier.contains(pins[name]), f"constraints.txt's {name}=={pins[name]} is outside {req}"
    torch = next(r for r in requirements if r.name == "torch")
    # a cluster's torch is kept: no upper bound, and an old enough floor (2.4, 2024)
    assert all(s.operator == ">=" for s in torch.specifier) and torch.specifier.contains("2.4.0")
    assert pins["torch"] == "2.14.1" and pins["torchvision"] == "0.29.1"  # the pair on this machine's disk
    python = project["requires-python"]
    assert all(f"3.{minor}" in _python_range(python) for minor in (11, 12, 13)), python
    make = (ROOT / "Makefile").read_text()
    assert "-c constraints.txt -e '.[dev]'" in make


def _python_range(spec: str) -> set[str]:
    from packaging.specifiers import SpecifierSet

    return {f"3.{m}" for m in range(8, 16) if SpecifierSet(spec).contains(f"3.{m}.0")}


# ---------------------------------------------------------------------------------------------- items 2, 3
def test_shipped_configs_are_found_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    release = shipped_dir() / "localize" / "release.yaml"
    assert resolve_config("release.yaml") == release  # a bare name one shipped config has
    assert resolve_config("configs/localize/release.yaml") == release  # the README's spelling, from elsewhere
    assert resolve_config("localize/release.yaml") == release
    assert resolve_config("nowhere.yaml") == Path("nowhere.yaml")  # unchanged: the caller names what was written
    (tmp_path / "release.yaml").write_text("clip: x\n")
    assert resolve_config("release.yaml") == Path("release.yaml")  # the user's own file wins
    args = resolve_config_args(["fit", "--config", "tiny_cpu.yaml", "--config=configs/pretrain/control_cpu.yaml"])
    assert args == [
        "fit",
        "--config",
        str(shipped_dir() / "pretrain" / "tiny_cpu.yaml"),
        f"--config={shipped_dir() / 'pretrain' / 'control_cpu.yaml'}",
    ]


def test_a_bare_name_several_shipped_configs_share_is_refused(tmp_path, monkeypatch):
    shipped = tmp_path / "shipped"
    for sub in ("pretrain", "zeroshot"):
        (shipped / sub).mkdir(parents=True)
        (shipped / sub / "tiny.yaml").write_text("x: 1\n")
    (shipped / "pretrain" / "only.yaml").write_text("x: 1\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=r"several shipped configs.*pretrain/tiny.yaml, zeroshot/tiny.yaml"):
        resolve_config("tiny.yaml", shipped)
    assert resolve_config("only.yaml", shipped) == shipped / "pretrain" / "only.yaml"
    assert resolve_config("zeroshot/tiny.yaml", shipped) == shipped / "zeroshot" / "tiny.yaml"


def test_paths_inside_a_localize_config_resolve_against_its_folder(tmp_path, monkeypatch):
    folder = tmp_path / "project" / "configs"
    folder.mkdir(parents=True)
    (folder / "my_prompts.yaml").write_text("modalities:\n  CT: [lungs]\n")
    (folder / "my.yaml").write_text(
        "clip: local-dir:models/clip\nsam: custom:models/sam.pth\nprompts: my_prompts.yaml\nrefine: {use_sam: true}\n"
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    config = LocalizeConfig.load(folder / "my.yaml")
    assert config.prompts == str(folder / "my_prompts.yaml")
    assert PromptConfig.load(config.prompts).for_modality("CT").prompts == ("lungs",)
    assert config.clip == f"local-dir:{folder / 'models' / 'clip'}"
    assert config.sam == f"custom:{folder / 'models' / 'sam.pth'}"
    # the same file through a relative path from its parent folder
    monkeypatch.chdir(tmp_path / "project")
    assert LocalizeConfig.load("configs/my.yaml").prompts == str(folder / "my_prompts.yaml")
    # command-line values stay relative to the working folder
    assert LocalizeConfig.load("configs/my.yaml", ["prompts=p.yaml"]).prompts == "p.yaml"
    dict_sam = folder / "dict.yaml"
    dict_sam.write_text("sam: {arch: custom, checkpoint: s.pth}\nclip: local-dir:/abs/clip\n")
    loaded = LocalizeConfig.load(dict_sam)
    assert (
        loaded.sam == {"arch": "custom", "checkpoint": str(folder / "s.pth")} and loaded.clip == "local-dir:/abs/clip"
    )


def test_the_release_config_runs_one_prompt_per_modality_through_the_lung_window(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # from another folder, by its shipped name
    config = LocalizeConfig.load("release.yaml")
    prompts = PromptConfig.load(config.prompts)
    for modality in ("MR", "CT", "XR", "US"):
        assert len(prompts.for_modality(modality).prompts) == 1, modality
    assert prompts.for_modality("MR").prompts == ("brain tumor",)
    assert "lung" in prompts.for_modality("CT").prompts[0] and config.intensity == {"ct_window": "lung"}
    assert str(config.sam).startswith("vit_h:") and config.sam.endswith("sam_vit_h_4b8939.pth")


@pytest.mark.parametrize("phase", sorted(PHASES))
def test_every_mwm_phase_answers_help(phase, capsys):
    try:
        code = main([phase, "--help"])
    except SystemExit as e:  # argparse-based mains exit after printing help
        code = e.code
    assert code in (0, None)
    out = capsys.readouterr().out
    assert "usage" in out.lower() and len(out) > 80


def test_mwm_without_a_phase_lists_them_and_refuses_an_unknown_one(capsys):
    assert main([]) == 2
    listed = capsys.readouterr().out
    assert all(f"  {name} " in listed for name in PHASES)
    assert main(["train"]) == 2 and "unknown phase 'train'" in capsys.readouterr().err
    assert main(["--version"]) == 0 and re.match(r"mwm \d+\.\d+\.\d+", capsys.readouterr().out)


# ---------------------------------------------------------------------------------------------- item 2: installed
def _copy_sources(dest: Path) -> Path:
    """The files a wheel is built from (a copy, so the build leaves nothing in the checkout)."""
    include = PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = {name.rstrip("*") for name in include}
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in packages:
        shutil.copytree(ROOT / name, dest / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, dest / name)
    return dest


def test_a_non_editable_install_in_a_fresh_venv_runs_mwm_and_finds_its_configs(tmp_path):
    """A wheel built from the sources, installed (no dependencies: they come from this interpreter's environment,
    added after the venv's own site-packages) into a new venv; `mwm` then runs from an unrelated folder."""
    pytest.importorskip("setuptools")
    source = _copy_sources(tmp_path / "src")
    wheels = tmp_path / "wheels"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels), "."],
        cwd=source,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stderr
    (wheel,) = wheels.glob("mask_what_matters-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    site = next((venv / "lib").glob("python3*/site-packages"))
    # the dependencies: this environment's site-packages, after the venv's own (whose copy of the package wins);
    # its .pth files are not run from here, so an editable install of the checkout there stays inactive
    deps = [p for p in sys.path if p.endswith("site-packages") and Path(p).is_dir()]
    (site / "zz_dependencies.pth").write_text("\n".join(deps) + "\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    python = venv / "bin" / "python"
    install = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q", str(wheel)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert install.returncode == 0, install.stderr
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(args, cwd=elsewhere, capture_output=True, text=True, env=env, timeout=300)

    probe = run(
        str(python),
        "-c",
        "import configs, data, localize.prompts as p; from configs import resolve_config as r; "
        "print(data.__file__); print(r('release.yaml')); print(r('configs/pretrain/tiny_cpu.yaml')); "
        "print(p.DEFAULT_PROMPTS_PATH.is_file())",
    )
    assert probe.returncode == 0, probe.stderr
    imported, release, tiny, prompts_found = probe.stdout.split()
    assert Path(imported).is_relative_to(site)  # the installed copy, not the checkout
    assert Path(release).is_relative_to(site) and Path(release).is_file()
    assert Path(tiny).is_relative_to(site) and Path(tiny).is_file() and prompts_found == "True"
    mwm = venv / "bin" / "mwm"
    version = run(str(mwm), "--version")
    assert version.returncode == 0 and version.stdout.startswith(f"mwm {PYPROJECT['project']['version']}")
    # a LightningCLI phase reads a shipped config given by its bare name, from this unrelated folder
    printed = run(str(mwm), "pretrain", "fit", "--config", "tiny_cpu.yaml", "--print_config")
    assert printed.returncode == 0, printed.stderr
    assert "input_size" in printed.stdout


# ---------------------------------------------------------------------------------------------- item 4
def test_code_version_is_the_package_version_plus_the_checkout_commit(tmp_path):
    import importlib.metadata

    from data.provenance import _git_commit, code_version

    assert code_version().split("+")[0] == importlib.metadata.version("mask-what-matters")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]
    repo = tmp_path / "repo"
    (repo / "pkg").mkdir(parents=True)
    (repo / "pkg" / "a.py").write_text("x = 1\n")
    subprocess.run([*git, "init", "-q", str(repo)], check=True)
    subprocess.run([*git, "-C", str(repo), "add", "."], check=True)
    subprocess.run([*git, "-C", str(repo), "commit", "-q", "-m", "one"], check=True)
    head = subprocess.run(
        ["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    commit = _git_commit(repo)
    assert commit is not None and head.startswith(commit) and len(commit) >= 7
    # a package installed inside some other repository (a venv in a project folder) reports no commit
    assert _git_commit(repo / "pkg") is None
    (repo / "pkg" / "a.py").write_text("x = 2\n")
    assert _git_commit(repo) == f"{commit}.dirty"
    assert _git_commit(tmp_path / "nowhere") is None


def test_checkpoints_of_pretraining_and_finetuning_record_the_code_version():
    from data.provenance import code_version
    from finetune.task import FinetuneTask
    from pretrain.module import MaskedPretraining

    for module in (MaskedPretraining("resnet18", 64, decoder_width=32), FinetuneTask("resnet18", "scratch")):
        checkpoint: dict = {}
        module.on_save_checkpoint(checkpoint)
        assert checkpoint["code_version"] == code_version(), type(module).__name__


def test_a_hub_model_is_recorded_with_the_revision_it_resolved_to(tmp_path):
    from localize.clip_loader import hub_revision

    spec = "hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224"
    assert hub_revision(spec, tmp_path) is None  # not downloaded on this machine
    refs = tmp_path / "models--microsoft--BiomedCLIP-PubMedBERT_256-vit_base_patch16_224" / "refs"
    refs.mkdir(parents=True)
    (refs / "main").write_text("9f341de24bfb00180f1b847274256e9b65a3a32e")
    assert hub_revision(spec, tmp_path) == "9f341de24bfb00180f1b847274256e9b65a3a32e"
    assert hub_revision("local-dir:/x", tmp_path) is None


# ---------------------------------------------------------------------------------------------- item 8
def test_the_models_doc_download_fetches_every_text_tower_file_the_loader_asks_for():
    import fnmatch
    import shlex

    from data.clip_folder import HF_CONFIG_NAME, TOKENIZER_FILE_NAMES

    text = (ROOT / "docs" / "MODELS.md").read_text()
    command = re.search(r"hf download microsoft/BiomedNLP-BiomedBERT\S+ (.*?)--local-dir", text, re.S)
    assert command, "docs/MODELS.md has the BERT download command"
    words = shlex.split(command.group(1).replace("\\\n", " "))
    patterns = words[words.index("--include") + 1 :] if "--include" in words else words
    # what the loader's messages ask for, beside open_clip's files (docs/MODELS.md, data/clip_folder.py)
    wanted = [HF_CONFIG_NAME, *TOKENIZER_FILE_NAMES, "tokenizer_config.json", "special_tokens_map.json"]
    for name in wanted:
        assert any(fnmatch.fnmatch(name, p) for p in patterns), f"{name} is not fetched by {patterns}"
    assert not any(fnmatch.fnmatch("pytorch_model.bin", p) for p in patterns)  # not the BERT weights


def test_the_repository_refers_to_no_file_it_does_not_hold_and_has_its_license():
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True)
    if tracked.returncode != 0:
        pytest.skip("not a git checkout")
    texts = [ROOT / f for f in tracked.stdout.split() if f.endswith((".md", ".py", ".yaml", ".txt", ".ipynb"))]
    this = Path(__file__).resolve()
    for path in texts:
        if path.resolve() == this or not path.is_file():
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        for phrase in ("FACTS.md", "project brief", "/work/.library"):
            assert phrase not in text, f"{path.relative_to(ROOT)} refers to {phrase!r}, which the repository lacks"
    license_text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in license_text and "Version 2.0, January 2004" in license_text
    assert PYPROJECT["project"]["license"] == {"text": "Apache-2.0"}
    assert not (ROOT / "pixel_stats.json").exists()  # written into the working folder by a run without logger


def test_the_makefile_follows_the_readme_path(tmp_path):
    """`make pretrain SQUARE=N` right after `make localize`: its own square store at input size N (the localize
    run's store is a max-side one); `make finetune` after `make pretrain export`: from the exported backbone."""
    if shutil.which("make") is None:
        pytest.skip("needs make")

    def dry(*args: str) -> str:
        run = subprocess.run(["make", "-n", "--no-print-directory", *args], cwd=ROOT, capture_output=True, text=True)
        assert run.returncode == 0, run.stderr
        return " ".join(run.stdout.replace("\\\n", " ").split())

    work = tmp_path / "work"
    square = dry("pretrain", f"WORK={work}", "SQUARE=64")
    assert f"--out {work}/packed_64.zarr --square 64" in square
    assert f"--data.packed {work}/packed_64.zarr" in square and "--model.input_size 64" in square
    plain = dry("pretrain", f"WORK={work}")
    assert f"--out {work}/packed.zarr --no-progress" in plain and "--model.input_size" not in plain
    chosen = dry("pretrain", f"WORK={work}", "SQUARE=64", f"PACKED={tmp_path}/mine.zarr")
    assert f"--data.packed {tmp_path}/mine.zarr" in chosen
    assert "--model.init" not in dry("finetune", f"WORK={work}")  # nothing exported yet: the config's init
    work.mkdir()
    (work / "backbone.pt").write_bytes(b"")
    assert f"--model.init {work}/backbone.pt" in dry("finetune", f"WORK={work}")
    assert f"--out {work}/backbone.pt" in dry("export", f"WORK={work}", "PRETRAIN_CKPT=x.ckpt")


def test_a_cache_that_recorded_the_method_version_as_code_version_stays_resumable(tmp_path):
    from data.manifest import scan_corpus
    from data.provenance import ProvenanceMismatch
    from data.roi_cache import RoiCache
    from data.sample import write_sample_corpus

    write_sample_corpus(tmp_path / "corpus", n=3, seed=0, size=48)
    manifest, _ = scan_corpus(tmp_path / "corpus", progress=False, workers=1)
    old = {"clip": {"source": "x"}, "precision": "fp32", "code_version": "0.2.0"}  # as caches before this change
    RoiCache.create(tmp_path / "old.zarr", manifest, old, mask_size=16)
    now = {"clip": {"source": "x"}, "precision": "fp32", "localizer_version": 2}
    assert RoiCache.open(tmp_path / "old.zarr", mode="r+", provenance=now).provenance == now
    with pytest.raises(ProvenanceMismatch, match="localizer_version"):  # an older method version is still refused
        RoiCache.open(tmp_path / "old.zarr", mode="r+", provenance={**now, "localizer_version": 3})
    fresh = RoiCache.create(tmp_path / "new.zarr", manifest, now, mask_size=16)
    assert fresh.info["code_version"] and "code_version" not in fresh.provenance
