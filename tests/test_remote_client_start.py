"""A ``--remote`` client loads and builds only what it runs: the keypoint detector, never the generator."""

from __future__ import annotations

import subprocess

from .test_remote_live import client_command, client_env, media, server  # noqa: F401 (fixtures)


def test_a_remote_client_builds_no_render_graph(tmp_path, media, server):  # noqa: F811
    args = ["--source", str(media["avatar"]), "--camera", str(media["driving"]), "--output", str(tmp_path / "out.mp4")]
    client = subprocess.run(client_command(server, *args, "--backend", "onnxruntime"), cwd=tmp_path,
                            env=client_env(tmp_path, server.token), capture_output=True, text=True, timeout=300)
    assert client.returncode == 0, client.stderr
    assert "config keypoint detector on the CPU: backend onnxruntime" in client.stderr, client.stderr
    # onnxruntime caches every graph it exports: the client's cache holds the keypoint graph and nothing else.
    built = sorted(path.name for path in (tmp_path / "client-home" / "compiled").iterdir())
    assert [name.split("-")[1] for name in built if name.endswith(".onnx")] == ["keypoints"], built
    assert not any("render" in name for name in built), built
