"""Checkpoints: strict loading of the original layout, and clear refusals of bad files."""

from __future__ import annotations

import os
import random
import re
from pathlib import Path

import pytest
import torch

from engine import CheckpointError, load_model
from engine.checkpoint import read_checkpoint

from .conftest import SMALL_PARITY_DIR

CONFIG = SMALL_PARITY_DIR / "config.yaml"
CHECKPOINT = SMALL_PARITY_DIR / "checkpoint.pth.tar"


class RunsCode:
    """A pickle payload that, if unpickled unsafely, creates a marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def original() -> dict:
    return torch.load(CHECKPOINT, map_location="cpu", weights_only=True)


def test_original_checkpoint_loads_and_ignores_training_entries(original):
    assert {"discriminator", "optimizer_generator", "epoch"} <= set(original)
    state_dicts = read_checkpoint(CHECKPOINT)
    assert set(state_dicts) == {"generator", "kp_detector"}
    assert state_dicts["generator"].keys() == original["generator"].keys()


def test_every_checkpoint_key_is_used(original):
    model = load_model(CONFIG, CHECKPOINT, fuse_layers=False)
    for network, module in (("generator", model.generator), ("kp_detector", model.kp_detector)):
        loaded = module.state_dict()
        assert loaded.keys() == original[network].keys()
        for key, tensor in original[network].items():
            assert torch.equal(loaded[key].cpu(), tensor), key


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_pickle_that_runs_code_is_refused_and_never_run(tmp_path, zip_format):
    marker = tmp_path / "code-was-executed"
    path = tmp_path / "evil.pth.tar"
    torch.save({"generator": RunsCode(marker), "kp_detector": {}}, path, _use_new_zipfile_serialization=zip_format)
    with pytest.raises(CheckpointError, match="pickled code .*system.*Nothing from it was executed"):
        load_model(CONFIG, path)
    assert not marker.exists()


def test_truncated_checkpoint_is_reported_as_corrupt(tmp_path):
    data = CHECKPOINT.read_bytes()
    path = tmp_path / "truncated.pth.tar"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"truncated or corrupt.*download it again") as error:
        load_model(CONFIG, path)
    assert f"{len(data) // 2:,} bytes" in str(error.value)


NOISE = [random.Random(seed).randbytes(4096) for seed in range(8)]


@pytest.mark.parametrize(
    "content",
    [b"", b"<html>quota exceeded</html>", *NOISE],
    ids=["empty", "html", *(f"noise{i}" for i in range(len(NOISE)))],
)
def test_garbage_file_is_reported_as_corrupt(tmp_path, content):
    path = tmp_path / "garbage.pth.tar"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_model(CONFIG, path)


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        load_model(CONFIG, tmp_path / "nope.pth.tar")


def test_checkpoint_without_networks(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"model": {"w": torch.zeros(1)}}, path)
    with pytest.raises(CheckpointError, match=r"\['generator', 'kp_detector'\] are missing \(found \['model'\]\)"):
        load_model(CONFIG, path)


def test_checkpoint_that_is_not_a_dict(tmp_path):
    path = tmp_path / "tensor.pth"
    torch.save(torch.zeros(3), path)
    with pytest.raises(CheckpointError, match="expected a dict .* found Tensor"):
        load_model(CONFIG, path)


def test_missing_and_unexpected_keys_are_named(tmp_path, original):
    generator = dict(original["generator"])
    generator.pop("final.bias")
    generator["extra.weight"] = torch.zeros(1)
    path = tmp_path / "keys.pth.tar"
    torch.save({**original, "generator": generator}, path)
    with pytest.raises(CheckpointError, match=r"generator.*1 missing keys \[final.bias\], 1 unexpected keys \[extra.weight\]"):
        load_model(CONFIG, path)


def test_checkpoint_for_another_config_names_parameter_and_both_shapes():
    """The small fixture checkpoint against the full vox-adv-256 architecture."""
    config = Path(__file__).parent.parent / "configs" / "vox-adv-256.yaml"
    with pytest.raises(CheckpointError) as error:
        load_model(config, CHECKPOINT)
    message = str(error.value)
    assert "kp_detector of config 'vox-adv-256' does not fit the config" in message
    assert re.search(r"parameter predictor\.encoder\.down_blocks\.0\.conv\.weight has shape \(16, 3, 3, 3\) "
                     r"in the checkpoint but the config expects \(64, 3, 3, 3\)", message), message
