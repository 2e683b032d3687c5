"""The safetensors copy of a checkpoint: made once, verified and read afterwards with no pickle, rebuilt when bad."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import engine.checkpoint
import engine.weights_cache
from engine import Animator, CheckpointError, ModelConfig, load_model
from engine.weights_cache import WeightsCache, read_entry, tensors_sha256

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


def test_first_load_says_it_makes_the_copy(home, checkpoint, caplog):
    with caplog.at_level(logging.INFO, logger="engine.weights_cache"):
        load_model(CONFIG, checkpoint)
    assert "making a safetensors copy of the weights (first start only)" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="engine.weights_cache"):
        load_model(CONFIG, checkpoint)
    assert "making a safetensors copy" not in caplog.text and "computing the sha256" not in caplog.text


def tensors_digest_of(entry) -> str:
    with safe_open(str(entry), framework="pt") as handle:
        return handle.metadata()["tensors_sha256"]


def flip_data_byte(entry):
    data = bytearray(entry.read_bytes())
    header = 8 + int.from_bytes(data[:8], "little")  # safetensors: u64 header length, JSON header, then the tensors
    data[(header + len(data)) // 2] ^= 0x40
    entry.write_bytes(bytes(data))


def truncate(entry):
    entry.write_bytes(entry.read_bytes()[:1000])


def drop_a_tensor_keep_the_digest(entry):
    with safe_open(str(entry), framework="pt") as handle:
        metadata = handle.metadata()
        tensors = {name: handle.get_tensor(name) for name in handle.keys() if name != "generator.final.bias"}
    save_file(tensors, str(entry), metadata=metadata)


def drop_a_tensor_with_a_matching_digest(entry):
    """A well-formed entry that hashes right but lacks a tensor: strict loading, not the digest, catches it."""
    with safe_open(str(entry), framework="pt") as handle:
        metadata = handle.metadata()
        tensors = {name: handle.get_tensor(name) for name in handle.keys() if name != "generator.final.bias"}
    save_file(tensors, str(entry), metadata={**metadata, "tensors_sha256": tensors_sha256(tensors)})


def older_format_without_a_digest(entry):
    with safe_open(str(entry), framework="pt") as handle:
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    save_file(tensors, str(entry), metadata={"format": "1"})


@pytest.mark.parametrize("damage", [flip_data_byte, truncate, drop_a_tensor_keep_the_digest,
                                    drop_a_tensor_with_a_matching_digest, older_format_without_a_digest])
def test_damaged_copy_is_detected_logged_and_rebuilt(home, checkpoint, small_inputs, caplog, monkeypatch, damage):
    expected = frames(load_model(CONFIG, checkpoint), small_inputs)
    entry = entries(home)[0]
    made = entry.read_bytes()
    digest = tensors_digest_of(entry)
    damage(entry)
    assert entry.read_bytes() != made
    with caplog.at_level(logging.WARNING):
        np.testing.assert_array_equal(frames(load_model(CONFIG, checkpoint), small_inputs), expected)
    assert f"weights cache entry {entry} is not usable" in caplog.text
    assert entries(home) == [entry] and tensors_digest_of(entry) == digest  # rebuilt: the same tensors as the first copy
    read_entry(entry, hashlib.sha256(checkpoint.read_bytes()).hexdigest())  # and they hash to what is written
    caplog.clear()
    forbid_unpickling(monkeypatch)  # the rebuilt copy is used again, silently
    with caplog.at_level(logging.WARNING):
        np.testing.assert_array_equal(frames(load_model(CONFIG, checkpoint), small_inputs), expected)
    assert caplog.text == ""


@pytest.mark.parametrize(
    "content",
    [b"[1, 2]", b'"a string"', b"42", b"null", b'{"x": "not a record"}', b'{"x": {"signature": 1, "sha256": []}}',
     b"{not json", b"\xff\xfe"],
    ids=["list", "string", "number", "null", "entry-string", "entry-wrong-types", "invalid-json", "not-utf8"],
)
def test_unexpected_index_is_treated_as_empty(home, checkpoint, small_inputs, content):
    expected = frames(load_model(CONFIG, checkpoint, weights_cache=False), small_inputs)
    home.mkdir(parents=True)
    (home / "checkpoint-hashes.json").write_bytes(content)
    np.testing.assert_array_equal(frames(load_model(CONFIG, checkpoint), small_inputs), expected)
    index = json.loads((home / "checkpoint-hashes.json").read_text())
    assert [record["sha256"] for record in index.values()] == [hashlib.sha256(checkpoint.read_bytes()).hexdigest()]
    assert len(entries(home)) == 1


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


def test_checkpoint_hash_is_remembered_while_the_file_is_unchanged(home, checkpoint, monkeypatch):
    cache = WeightsCache(home)
    digest = cache.checkpoint_sha256(checkpoint)
    assert digest == hashlib.sha256(checkpoint.read_bytes()).hexdigest()

    def refuse(path):
        raise AssertionError("the checkpoint was hashed again although it did not change")
    monkeypatch.setattr(engine.weights_cache, "file_sha256", refuse)
    assert WeightsCache(home).checkpoint_sha256(checkpoint) == digest


def test_checkpoint_rewritten_in_place_with_same_size_and_mtime_is_rehashed(home, checkpoint, small_inputs, tmp_path):
    document = torch.load(checkpoint, weights_only=True)
    torch.save(document, checkpoint)  # written by this torch, as the changed copy will be: the same layout
    before = frames(load_model(CONFIG, checkpoint), small_inputs)
    document["generator"]["final.bias"] += 0.5
    changed = tmp_path / "changed" / checkpoint.name  # torch.save names the records after the file
    changed.parent.mkdir()
    torch.save(document, changed)
    assert changed.stat().st_size == checkpoint.stat().st_size
    stat = checkpoint.stat()
    with open(checkpoint, "r+b") as stream:  # same inode, same size
        stream.write(changed.read_bytes())
    os.utime(checkpoint, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # and the old modification time
    assert (checkpoint.stat().st_size, checkpoint.stat().st_mtime_ns) == (stat.st_size, stat.st_mtime_ns)
    after = frames(load_model(CONFIG, checkpoint), small_inputs)
    assert len(entries(home)) == 2
    assert np.abs(after.astype(int) - before.astype(int)).max() > 10
    assert WeightsCache(home).checkpoint_sha256(checkpoint) == hashlib.sha256(checkpoint.read_bytes()).hexdigest()


def test_copy_is_keyed_by_architecture_not_file_name(home, checkpoint):
    cache = WeightsCache(home)
    config = ModelConfig.from_yaml(CONFIG)
    renamed = ModelConfig(name="another-name", frame_size=config.frame_size, kp_detector=config.kp_detector,
                          generator=config.generator)
    assert cache.entry_path(checkpoint, config) == cache.entry_path(checkpoint, renamed)
