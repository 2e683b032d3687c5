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
    with pytest.raises(CheckpointError, match="pickled code .*system.*Nothing from it was executed") as error:
        load_model(CONFIG, path)
    assert not marker.exists()
    assert "weights_only" not in str(error.value)  # torch's advice to turn the protection off is not passed on


def test_truncated_checkpoint_is_reported_as_corrupt(tmp_path):
    data = CHECKPOINT.read_bytes()
    path = tmp_path / "truncated.pth.tar"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError) as error:
        load_model(CONFIG, path)
    message = str(error.value)
    assert message == (
        f"{path} ({len(data) // 2:,} bytes) is truncated or corrupt: it is a zip archive, as torch.save writes, but an "
        "incomplete or damaged one (torch's reader says: PytorchStreamReader failed reading zip archive: failed finding "
        "central directory); the file was probably cut short. Nothing from it was executed. Expected a .pth.tar saved "
        "by torch.save (vox-adv-cpk.pth.tar is 228 MB, md5 8a45a24037871c045fbb8a6a8aa95ebc); download it again."
    )


NOISE = [random.Random(seed).randbytes(4096) for seed in range(8)]


@pytest.mark.parametrize(
    "content",
    [b"", b"<html>quota exceeded</html>", *NOISE],
    ids=["empty", "html", *(f"noise{i}" for i in range(len(NOISE)))],
)
def test_garbage_file_is_reported_as_corrupt(tmp_path, content):
    path = tmp_path / "garbage.pth.tar"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="truncated or corrupt") as error:
        load_model(CONFIG, path)
    message = str(error.value)
    assert message.endswith("download it again.") and "Nothing from it was executed" in message
    assert "weights_only" not in message


@pytest.mark.parametrize(
    "content, description",
    [(b"", "the file is empty"),
     (b"<!DOCTYPE html><html>Quota exceeded</html>", "it is a web page, not a checkpoint"),
     (b"\x80\x02}q\x00", "it is a pickle, as old torch.save files are, but torch could not read it through"),
     (random.Random(0).randbytes(4096).replace(b"\x80", b"\x00"), "it is neither a zip archive nor a pickle")],
    ids=["empty", "web-page", "cut-pickle", "noise"],
)
def test_corrupt_file_is_described_in_our_own_words(tmp_path, content, description):
    path = tmp_path / "bad.pth.tar"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=f"is truncated or corrupt: {re.escape(description)}"):
        load_model(CONFIG, path)


def write_changed(tmp_path, original, network: str, key: str, tensor: torch.Tensor) -> Path:
    path = tmp_path / "changed.pth.tar"
    torch.save({**original, network: {**original[network], key: tensor}}, path)
    return path


@pytest.mark.parametrize("value, counts", [(float("nan"), "1 NaN and 0 infinite"), (float("inf"), "0 NaN and 1 infinite")])
def test_non_finite_weights_are_refused_naming_the_tensor(tmp_path, original, value, counts):
    weight = original["generator"]["final.weight"].clone()
    weight.view(-1)[7] = value
    path = write_changed(tmp_path, original, "generator", "final.weight", weight)
    with pytest.raises(CheckpointError, match=rf"generator of config 'config': tensor final.weight holds {counts} values "
                                              rf"\(of {weight.numel():,}\)"):
        load_model(CONFIG, path, weights_cache=False)


def test_integer_weights_are_refused_naming_the_tensor(tmp_path, original):
    weight = original["kp_detector"]["kp.weight"].round().to(torch.int64)
    path = write_changed(tmp_path, original, "kp_detector", "kp.weight", weight)
    with pytest.raises(CheckpointError, match=r"kp_detector of config 'config': tensor kp.weight holds torch.int64 values "
                                              r"where the network expects floating point numbers"):
        load_model(CONFIG, path)


def test_integer_batchnorm_counters_and_half_precision_weights_load(tmp_path, original):
    """num_batches_tracked is an integer in every checkpoint; a float16 copy of the weights is still floating point."""
    assert original["generator"]["first.norm.num_batches_tracked"].dtype == torch.int64
    half = {network: {key: value.half() if value.is_floating_point() else value for key, value in state.items()}
            for network, state in original.items() if network in ("generator", "kp_detector")}
    path = tmp_path / "half.pth.tar"
    torch.save(half, path)
    model = load_model(CONFIG, path, fuse_layers=False)
    assert model.generator.final.weight.dtype == torch.float32


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
