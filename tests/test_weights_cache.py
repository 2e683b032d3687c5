"""The safetensors copy of a checkpoint: made once, read afterwards with no pickle, rebuilt when bad."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
import torch

import engine.checkpoint
from engine import Animator, CheckpointError, ModelConfig, load_model
from engine.weights_cache import WeightsCache

from .conftest import CONFIGS, SMALL_PARITY_DIR

CONFIG = SMALL_PARITY_DIR / "config.yaml"


@pytest.fixture()
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("FOMM_LIVE_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture()
def checkpoint(tmp_path):
    path = tmp_path / "vox.pth.tar"
    shutil.copy(SMALL_PARITY_DIR / "checkpoint.pth.tar", path)
    return path


def frames(model, inputs) -> np.ndarray:
    animator = Animator(model, inputs["source"])
    return np.stack([animator(frame) for frame in inputs["driving"]])


def entries(home):
    return sorted((home / "safetensors").glob("*.safetensors"))


def forbid_unpickling(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("torch.load was called: the cached safetensors copy was not used")
    monkeypatch.setattr(engine.checkpoint.torch, "load", refuse)


def test_first_load_converts_and_later_loads_use_the_copy(home, checkpoint, small_inputs, monkeypatch):
    reference = frames(load_model(CONFIG, checkpoint, weights_cache=False), small_inputs)
    assert entries(home) == []
    first = frames(load_model(CONFIG, checkpoint), small_inputs)
    assert len(entries(home)) == 1
    forbid_unpickling(monkeypatch)
    second = frames(load_model(CONFIG, checkpoint), small_inputs)
    direct = frames(load_model(CONFIG, entries(home)[0]), small_inputs)  # a .safetensors file loads as a checkpoint
    np.testing.assert_array_equal(first, reference)
    np.testing.assert_array_equal(second, reference)
    np.testing.assert_array_equal(direct, reference)


def test_corrupt_copy_is_rebuilt(home, checkpoint, small_inputs):
    expected = frames(load_model(CONFIG, checkpoint), small_inputs)
    entry = entries(home)[0]
    entry.write_bytes(entry.read_bytes()[:1000])
    np.testing.assert_array_equal(frames(load_model(CONFIG, checkpoint), small_inputs), expected)
    assert entries(home) == [entry] and entry.stat().st_size > 1000


def test_changed_checkpoint_is_not_served_from_the_old_copy(home, checkpoint, small_inputs):
    before = frames(load_model(CONFIG, checkpoint), small_inputs)
    document = torch.load(checkpoint, weights_only=True)
    document["generator"]["final.bias"] += 0.5
    torch.save(document, checkpoint)
    after = frames(load_model(CONFIG, checkpoint), small_inputs)
    assert len(entries(home)) == 2
    assert np.abs(after.astype(int) - before.astype(int)).max() > 10


def test_nothing_is_cached_for_a_checkpoint_that_does_not_fit(home, checkpoint):
    with pytest.raises(CheckpointError):
        load_model(CONFIGS / "vox-256.yaml", checkpoint)
    assert entries(home) == []


def test_checkpoint_hash_is_remembered_by_path_size_and_mtime(home, checkpoint):
    cache = WeightsCache(home)
    digest = cache.checkpoint_sha256(checkpoint)
    stat = checkpoint.stat()
    data = bytearray(checkpoint.read_bytes())
    data[-1] ^= 0xFF
    checkpoint.write_bytes(bytes(data))
    os.utime(checkpoint, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert cache.checkpoint_sha256(checkpoint) == digest  # same signature: not re-read
    os.utime(checkpoint, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))
    assert cache.checkpoint_sha256(checkpoint) != digest


def test_copy_is_keyed_by_architecture_not_file_name(home, checkpoint):
    cache = WeightsCache(home)
    config = ModelConfig.from_yaml(CONFIG)
    renamed = ModelConfig(name="another-name", frame_size=config.frame_size, kp_detector=config.kp_detector,
                          generator=config.generator)
    assert cache.entry_path(checkpoint, config) == cache.entry_path(checkpoint, renamed)
