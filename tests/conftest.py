"""Shared fixtures.

The parity suite (tests/test_parity.py) runs against every directory given
with ``--parity-dir`` (repeatable), or against the bundled
``tests/fixtures/fomm-parity-small`` when none is given.  A parity directory
holds ``config.yaml``, ``checkpoint.pth.tar``, ``inputs.npz`` and
``expected.npz`` in the layout described in that fixture's README.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from engine import load_model

FIXTURES = Path(__file__).parent / "fixtures"
SMALL_PARITY_DIR = FIXTURES / "fomm-parity-small"
CONFIGS = Path(__file__).parent.parent / "configs"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--parity-dir",
        action="append",
        default=[],
        type=Path,
        help="a checkpoint + expected-outputs directory to check parity against (repeatable)",
    )
    parser.addoption("--run-network", action="store_true", default=False,
                     help="also run the tests marked network, which download (a torch-tensorrt wheel, onnx-tensorrt's "
                          "operator matrix)")
    parser.addoption("--run-slow", action="store_true", default=False,
                     help="also run the tests marked slow, which take minutes each (torch.compile builds on a CPU)")


# marker -> (the option that runs its tests, why they are skipped without it)
OPT_IN_MARKERS = {
    "network": ("run_network", "downloads from the network: run with --run-network"),
    "slow": ("run_slow", "takes minutes (torch.compile builds): run with --run-slow"),
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip the tests marked network or slow, with the reason, unless their option is given: the default run is
    offline and quick."""
    for marker, (option, reason) in OPT_IN_MARKERS.items():
        if config.getoption(option):
            continue
        for item in items:
            if marker in item.keywords:
                item.add_marker(pytest.mark.skip(reason=reason))


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "parity_dir" in metafunc.fixturenames:
        directories = metafunc.config.getoption("parity_dir") or [SMALL_PARITY_DIR]
        metafunc.parametrize("parity_dir", directories, ids=[d.name for d in directories], scope="module")


@pytest.fixture(scope="session")
def small_model():
    """The fixture checkpoint (narrow vox-adv-256), BatchNorm folded, on the CPU."""
    return load_model(SMALL_PARITY_DIR / "config.yaml", SMALL_PARITY_DIR / "checkpoint.pth.tar")


@pytest.fixture(scope="session")
def small_inputs() -> dict[str, np.ndarray]:
    """source: 256x256x3 uint8; driving: 3x256x256x3 uint8 (see the fixture's README)."""
    with np.load(SMALL_PARITY_DIR / "inputs.npz") as inputs:
        return {key: inputs[key] for key in inputs.files}


@pytest.fixture(autouse=True)
def _deterministic_seed():
    torch.manual_seed(0)


def pytest_configure(config: pytest.Config) -> None:
    """Keep the tool's cache (safetensors copies, hashes) out of the user's home during tests; register the markers."""
    config.addinivalue_line("markers", "network: downloads (skipped unless --run-network is given)")
    config.addinivalue_line("markers", "slow: takes minutes (skipped unless --run-slow is given)")
    home = tempfile.mkdtemp(prefix="fomm-live-test-home-")
    atexit.register(shutil.rmtree, home, ignore_errors=True)
    os.environ["FOMM_LIVE_HOME"] = home


@pytest.fixture()
def pinned_home(tmp_path, monkeypatch):
    """A fresh cache; the engine's sources fingerprinted once, so that an edit in the working tree while the test
    runs cannot change the artifact keys between two starts."""
    from engine.backends import artifacts

    monkeypatch.setenv("FOMM_LIVE_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(artifacts, "code_fingerprint", lambda fingerprint=artifacts.code_fingerprint(): fingerprint)
    return tmp_path / "home"
