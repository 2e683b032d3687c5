"""load_model by a released model's name: its config shipped inside the package, its weights where --download-weights puts them."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
import torch

from engine import CheckpointError, ConfigError, ModelConfig, load_model
from engine.config import config_path, released_models
from engine.weights import default_checkpoint_path

from .conftest import CONFIGS

REPO = Path(__file__).resolve().parent.parent
RELEASED = ["bair-256", "fashion-256", "mgif-256", "nemo-256", "taichi-256", "taichi-adv-256", "vox-256", "vox-adv-256"]


@pytest.fixture(scope="module")
def released_home(tmp_path_factory) -> Path:
    """A data directory holding vox-adv-256 weights (random values, the released layout) where --download-weights puts them."""
    home = tmp_path_factory.mktemp("home")
    model = load_model(CONFIGS / "vox-adv-256.yaml", None, fuse_layers=False)
    weights = home / "weights" / "vox-adv-cpk.pth.tar"
    weights.parent.mkdir()
    torch.save({"generator": model.generator.state_dict(), "kp_detector": model.kp_detector.state_dict()}, weights)
    return home


def test_every_released_name_finds_its_shipped_config(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # not the repository: the configs/ folder is not in reach
    assert released_models() == RELEASED
    for name in RELEASED:
        assert ModelConfig.load(name) == ModelConfig.from_yaml(CONFIGS / f"{name}.yaml")


def test_paths_still_work_and_a_bare_name_never_shadows_a_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert config_path(str(CONFIGS / "vox-256.yaml")) == CONFIGS / "vox-256.yaml"
    shutil.copy(CONFIGS / "taichi-256.yaml", tmp_path / "vox-adv-256")  # a file of that name, in the working directory
    assert config_path("vox-adv-256") == Path("vox-adv-256")
    assert config_path("missing.yaml") == Path("missing.yaml")
    with pytest.raises(ConfigError, match="config file not found: missing.yaml .*or the name of a released model: bair-256"):
        load_model("missing.yaml", None)


def test_unknown_name_lists_the_released_models():
    with pytest.raises(ConfigError, match=re.escape(f"unknown model 'vox-adv-512': expected the name of a released "
                                                    f"model ({', '.join(RELEASED)}) or the path of a FOMM YAML config")):
        load_model("vox-adv-512")


def test_name_loads_the_weights_where_download_puts_them(released_home, tmp_path, monkeypatch):
    monkeypatch.setenv("FOMM_LIVE_HOME", str(released_home))
    monkeypatch.chdir(tmp_path)
    assert default_checkpoint_path("vox-adv-256") == released_home / "weights" / "vox-adv-cpk.pth.tar"
    model = load_model("vox-adv-256", device="cpu", fuse_layers=False, weights_cache=False)
    saved = torch.load(released_home / "weights" / "vox-adv-cpk.pth.tar", weights_only=True)
    assert torch.equal(model.generator.state_dict()["final.weight"], saved["generator"]["final.weight"])
    assert model.config.name == "vox-adv-256"


def test_missing_weights_say_how_to_fetch_them(tmp_path, monkeypatch):
    monkeypatch.setenv("FOMM_LIVE_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CheckpointError) as error:
        load_model("vox-adv-256")
    message = str(error.value)
    assert f"looked at: {tmp_path / 'home' / 'weights' / 'vox-adv-cpk.pth.tar'}, {tmp_path / 'vox-adv-cpk.pth.tar'}" in message
    assert "python run_live.py --download-weights" in message
    with pytest.raises(CheckpointError, match=r"no checkpoint found for taichi-256 .* get taichi-cpk.pth.tar from the "
                                              r"original FOMM release and put it at "):
        load_model("taichi-256")


def test_a_config_that_is_not_released_needs_a_checkpoint(tmp_path):
    shutil.copy(CONFIGS / "vox-256.yaml", tmp_path / "mine.yaml")
    with pytest.raises(CheckpointError, match="config 'mine' is not a released model .* pass the checkpoint's path"):
        load_model(tmp_path / "mine.yaml")


def python_snippet_of_readme() -> str:
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("### From Python"):]
    return re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)


def test_readme_python_snippet_runs_as_written_from_any_directory(released_home, tmp_path):
    """The snippet with the images it leaves to the reader defined (256x256 RGB), run from a directory that is not the repository."""
    snippet = python_snippet_of_readme()
    assert 'load_model("vox-adv-256"' in snippet
    images = ("import numpy as np\n"
              "source_image = other_avatar = np.full((256, 256, 3), 128, np.uint8)\n"
              "driving_frame = np.zeros((256, 256, 3), np.uint8)\n")
    check = "\nassert frame.shape == (256, 256, 3) and frame.dtype == np.uint8\nprint('snippet ok')\n"
    env = {**os.environ, "FOMM_LIVE_HOME": str(released_home)}
    result = subprocess.run([sys.executable, "-c", images + snippet + check], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "snippet ok" in result.stdout


def test_pyproject_lists_every_package_of_the_tree():
    """The package list is explicit (for engine.configs): a new package directory must be added to it."""
    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    in_tree = {".".join(init.parent.relative_to(REPO).parts) for top in ("engine", "live")
               for init in (REPO / top).rglob("__init__.py")}
    assert in_tree <= listed and listed - in_tree == {"engine.configs"}


def test_built_wheel_ships_the_released_configs(tmp_path):
    """Build the wheel (offline, from a copy of the sources) and look inside: the configs are in engine/configs/."""
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    for folder in ("engine", "live", "configs"):
        shutil.copytree(REPO / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__"))
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                             "-w", str(tmp_path / "wheel"), str(source)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    [wheel] = (tmp_path / "wheel").glob("fomm_live-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert sorted(n for n in names if n.startswith("engine/configs/")) == [f"engine/configs/{m}.yaml" for m in RELEASED]
    assert "engine/model.py" in names and "engine/backends/base.py" in names and "live/cli.py" in names
    assert not any(n.startswith("configs/") for n in names)

