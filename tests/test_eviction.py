"""The compiled-model cache stays under its size limit: least recently used entries go first, never one in use."""

from __future__ import annotations

import logging
import os
import time

import pytest

from engine.backends import artifacts
from engine.backends.eviction import LIMIT_ENV, cache_limit_bytes, entries, evict, size_text
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


def test_a_missing_or_unusable_cache_folder_has_no_entries(tmp_path):
    assert entries(tmp_path / "never-made") == [] and evict(tmp_path / "never-made", 0, set()) == []
    (tmp_path / "a-file").write_text("not a folder")
    under_a_file = tmp_path / "a-file" / "compiled"  # a data directory under a regular file (tests/test_cache_faults)
    assert entries(under_a_file) == [] and evict(under_a_file, 0, set()) == []


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


def test_markers_are_counted_but_stay_and_an_artifact_without_its_digest_goes(tmp_path):
    failed = make_entry(tmp_path, "tensorrt-render", HASHES[0], 10, 900, companions=())  # no digest: a marker
    failed[0].rename(failed[0].with_suffix(".failed"))
    refused = make_entry(tmp_path, "openvino-render", HASHES[1], 0, 800, companions=(".quality.json",))
    refused[0].unlink()  # a refused int8 model: its report stays, its blob is gone
    # A TensorRT program built, then failing to load: the program, its digest and the failure marker.
    built_then_failed = make_entry(tmp_path, "tensorrt-keypoints", HASHES[2], 1000, 700)
    marker = tmp_path / f"tensorrt-keypoints-{HASHES[2]}.failed"
    marker.write_text("RuntimeError: engine does not deserialize\n")
    os.utime(marker, (time.time() - 700,) * 2)
    undigested = make_entry(tmp_path, "onnx-render", HASHES[3], 1000, 100, companions=())  # cut short before its digest
    assert [entry.holds_artifact for entry in entries(tmp_path)] == [False, False, True, True]

    removed = evict(tmp_path, limit=0, keep=set())
    assert [entry.name for entry in removed] == [f"tensorrt-keypoints-{HASHES[2]}", f"onnx-render-{HASHES[3]}"]
    assert not any(path.exists() for path in built_then_failed + undigested)
    assert marker.exists() and (tmp_path / f"tensorrt-render-{HASHES[0]}.failed").exists() and refused[1].exists()


def test_a_start_over_the_limit_removes_old_entries_but_none_of_the_graphs_it_uses(tmp_path, monkeypatch, caplog):
    pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")
    from engine import load_model

    from .test_backends import CHECKPOINT, CONFIG

    monkeypatch.setenv("FOMM_LIVE_HOME", str(tmp_path))
    monkeypatch.setattr(artifacts, "_USED_HERE", set())
    load_model(CONFIG, CHECKPOINT, backend="onnxruntime")
    folder = tmp_path / "compiled"
    graphs = sorted(folder.glob("onnx-*.onnx"))
    assert len(graphs) == 2
    stale = make_entry(folder, "onnx-render", HASHES[3], 2000, 600)
    # The next start must build the keypoint graph again while its render graph is the oldest entry of all.
    (render,) = [path for path in graphs if path.name.startswith("onnx-render-")]
    os.utime(render, (time.time() - 3600,) * 2)
    for path in folder.glob("onnx-keypoints-*"):
        path.unlink()
    size = sum(path.stat().st_size for path in stale)
    monkeypatch.setattr(artifacts, "_USED_HERE", set())  # a new start
    monkeypatch.setenv(LIMIT_ENV, str(1 / 2**30))  # one byte: everything else must go
    with caplog.at_level(logging.INFO, logger="engine.backends"):
        load_model(CONFIG, CHECKPOINT, backend="onnxruntime")
    assert "exporting the keypoints graph" in caplog.text
    assert "exporting the render graph" not in caplog.text  # not removed after the keypoints' build, then rebuilt
    assert all(path.exists() for path in graphs) and not any(path.exists() for path in stale)
    assert (f"the compiled-model cache is over its limit of 1 byte ({LIMIT_ENV}): removed 1 entry used least "
            f"recently ({size_text(size)}): onnx-render-{HASHES[3]}") in caplog.text


def test_a_limit_that_is_not_a_number_stops_the_start_before_anything_is_built(tmp_path, monkeypatch):
    from engine import load_model

    from .test_backends import CHECKPOINT, CONFIG

    monkeypatch.setenv("FOMM_LIVE_HOME", str(tmp_path))
    monkeypatch.setenv(LIMIT_ENV, "4GB")
    for backend in ("auto", "onnxruntime", "tensorrt"):
        with pytest.raises(EngineError, match="FOMM_LIVE_CACHE_GB must be a positive number of gigabytes"):
            load_model(CONFIG, CHECKPOINT, backend=backend)
    assert not (tmp_path / "compiled").exists()  # nothing built, no failure remembered


def test_temporaries_a_killed_build_left_are_removed_after_a_day_and_nothing_else(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("FOMM_LIVE_HOME", str(tmp_path))
    folder = tmp_path / "compiled"
    names = []

    def build(temporary):  # the name a build's temporary gets; kill -9 during the build leaves it behind
        names.append(temporary.name)
        temporary.write_bytes(b"half-written")

    artifacts.build_atomically(folder / f"openvino-render-{HASHES[0]}.blob", build)
    leftovers = [folder / names[0], folder / f".openvino-render-{HASHES[0]}.blob.sha256.k3x9q_ab.tmp"]
    fresh = folder / f".openvino-render-{HASHES[1]}-zz81mq0p.tmp.blob"  # a build running now, in another start
    kept = [folder / f"openvino-render-{HASHES[0]}.blob", folder / "tensorrt-timing-cache.bin", fresh]
    for path in leftovers + kept[1:]:
        path.write_bytes(b"y" * 100)
    day_ago = time.time() - 24 * 3600 - 60
    for path in leftovers + kept:
        os.utime(path, (day_ago, day_ago) if path is not fresh else None)
    with caplog.at_level(logging.INFO, logger="engine.backends.artifacts"):
        artifacts.keep_under_limit(cache_limit_bytes())
    assert [path.exists() for path in leftovers] == [False, False]
    assert all(path.exists() for path in kept)
    assert "removed 2 temporary files of builds stopped over a day ago (killed or crashed)" in caplog.text


@pytest.mark.parametrize("size, text", [(4 * 2**30, "4 GiB"), (int(0.0001 * 2**30), "105 KiB"), (3 * 2**19, "1.5 MiB"),
                                        (1000 * 2**30, "1000 GiB"), (int(1023.9 * 2**20), "1024 MiB"),
                                        (int(99.94 * 2**10), "99.9 KiB"), (1, "1 byte"), (0, "0 bytes")])
def test_sizes_are_said_in_the_unit_that_fits(size, text):
    assert size_text(size) == text  # a limit of 0.0001 GiB was once said as "9.99998e-05 GiB", a freed 2 kB as "0.0 MB"
