"""The compiled-model cache stays under its size limit: least recently used entries go first, never one in use."""

from __future__ import annotations

import logging
import os
import time

import pytest

from engine.backends import artifacts
from engine.backends.eviction import LIMIT_ENV, cache_limit_bytes, entries, evict
from engine.errors import EngineError

HASHES = ["0" * 24, "1" * 24, "2" * 24, "3" * 24]


def make_entry(folder, kind, digest, size, age_seconds, companions=(".sha256",)):
    """An artifact of ``size`` bytes with its companions, last modified ``age_seconds`` ago."""
    folder.mkdir(parents=True, exist_ok=True)
    artifact = folder / f"{kind}-{digest}.blob"
    artifact.write_bytes(b"x" * size)
    paths = [artifact] + [artifact.with_name(artifact.name + suffix) for suffix in companions]
    for path in paths[1:]:
        path.write_text("companion\n")
    when = time.time() - age_seconds
    for path in paths:
        os.utime(path, (when, when))
    return paths


def test_the_least_recently_used_entries_go_first_with_their_companions(tmp_path):
    oldest = make_entry(tmp_path, "openvino-render", HASHES[0], 1000, 300, (".sha256", ".quality.json"))
    older = make_entry(tmp_path, "onnx-render", HASHES[1], 1000, 200)
    newest = make_entry(tmp_path, "onnx-keypoints", HASHES[2], 1000, 100)
    others = [tmp_path / ".openvino-render-abc.tmp.blob", tmp_path / "tensorrt-timing-cache.bin"]
    for path in others:
        path.write_bytes(b"y" * 5000)
    (tmp_path / "onnxruntime-tensorrt").mkdir()

    assert [entry.name for entry in entries(tmp_path)] == [f"openvino-render-{HASHES[0]}", f"onnx-render-{HASHES[1]}",
                                                            f"onnx-keypoints-{HASHES[2]}"]
    removed = evict(tmp_path, limit=2100, keep=set())
    assert [entry.name for entry in removed] == [f"openvino-render-{HASHES[0]}"]
    assert not any(path.exists() for path in oldest)  # the blob, its digest and its quality report
    assert all(path.exists() for path in older + newest + others) and (tmp_path / "onnxruntime-tensorrt").is_dir()

    assert evict(tmp_path, limit=2100, keep=set()) == []  # under the limit: nothing more goes
    removed = evict(tmp_path, limit=0, keep={f"onnx-render-{HASHES[1]}"})
    assert [entry.name for entry in removed] == [f"onnx-keypoints-{HASHES[2]}"]  # the kept one stays, though older
    assert all(path.exists() for path in older) and not any(path.exists() for path in newest)


def test_a_missing_cache_folder_has_no_entries(tmp_path):
    assert entries(tmp_path / "never-made") == [] and evict(tmp_path / "never-made", 0, set()) == []


@pytest.mark.parametrize("value, expected", [(None, 4 * 2**30), ("0.5", 2**29), (" 10 ", 10 * 2**30)])
def test_the_limit_comes_from_the_environment(monkeypatch, value, expected):
    if value is None:
        monkeypatch.delenv(LIMIT_ENV, raising=False)
    else:
        monkeypatch.setenv(LIMIT_ENV, value)
    assert cache_limit_bytes() == expected


@pytest.mark.parametrize("value", ["lots", "0", "-2", "inf", "nan"])
def test_a_limit_that_is_not_a_positive_number_is_refused_with_what_was_found(monkeypatch, value):
    monkeypatch.setenv(LIMIT_ENV, value)
    with pytest.raises(EngineError, match=rf"FOMM_LIVE_CACHE_GB must be a positive number of gigabytes for the "
                                          rf"compiled-model cache, e.g. 4; found '{value}'"):
        cache_limit_bytes()


def test_a_build_over_the_limit_removes_the_oldest_entry_but_not_one_in_use(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("FOMM_LIVE_HOME", str(tmp_path))
    monkeypatch.setattr(artifacts, "_USED_HERE", set())
    folder = tmp_path / "compiled"
    stale = make_entry(folder, "onnx-render", HASHES[0], 4000, 500)
    in_use = make_entry(folder, "onnx-keypoints", HASHES[1], 4000, 400)
    # This process uses the older-than-everything-else keypoints entry: it is verified, touched and kept.
    in_use[1].write_text(artifacts.file_sha256(in_use[0]) + "\n")
    os.utime(in_use[0], (time.time() - 400,) * 2)
    assert artifacts.cached_artifact(in_use[0], lambda path: pytest.fail("rebuilt"), "building") == in_use[0]
    assert os.path.getmtime(in_use[0]) > time.time() - 60  # a use marks it recent

    monkeypatch.setenv(LIMIT_ENV, str(6000 / 2**30))
    os.utime(in_use[0], (time.time() - 900,) * 2)  # even when it looks the oldest
    fresh = folder / f"onnx-render-{HASHES[2]}.onnx"
    with caplog.at_level(logging.INFO, logger="engine.backends.artifacts"):
        artifacts.cached_artifact(fresh, lambda path: path.write_bytes(b"z" * 1000), "building")
    assert fresh.exists() and all(path.exists() for path in in_use)
    assert not any(path.exists() for path in stale)
    assert (f"the compiled-model cache is over its limit of 0.0 GiB ({LIMIT_ENV}): removed 1 entry used least "
            f"recently (0.0 MB): onnx-render-{HASHES[0]}") in caplog.text
