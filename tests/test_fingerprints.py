"""The two weight fingerprints: the artifact cache's (engine.backends.base.weights_fingerprint) and the keypoint
detector's that a remote client and server compare (live.remote.protocol.keypoint_detector_fingerprint).

Both are stored or sent, so their values are pinned: a change to the bytes hashed would make every cached
artifact stale and every server refuse the clients of the release before.  The pins were computed before both
came to share one digest (engine.backends.base.state_dicts_digest)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from engine.backends.base import state_dicts_digest, weights_fingerprint
from live.remote.protocol import keypoint_detector_fingerprint

PINNED = {  # dtype -> (weights_fingerprint of two such networks, keypoint_detector_fingerprint of one)
    torch.float32: ("5dce6a2a583f3f1e002307564a6faf0e52d7cb0c44211a4853126bb6f4974cb9",
                    "316ac74dc6a96d15036ec51157aa505409a6ef39e64f10645c5b2455938cc072"),
    torch.float16: ("9d4cf3090591791e25fac00517c4944dfd3b8044e01ff5ba4382b2abc2178356",
                    "316ac74dc6a96d15036ec51157aa505409a6ef39e64f10645c5b2455938cc072"),
}


def network(dtype: torch.dtype = torch.float32) -> nn.Module:
    """A convolution and a BatchNorm (float parameters and buffers, and an int64 counter) with fixed values, exact in
    float16: entry i holds 0, 1, 2, ... divided by 2**i."""
    net = nn.Sequential(nn.Conv2d(2, 3, 1), nn.BatchNorm2d(3))
    with torch.no_grad():
        for index, tensor in enumerate(net.state_dict().values()):
            if tensor.is_floating_point():
                tensor.copy_(torch.arange(tensor.numel(), dtype=torch.float32).reshape(tensor.shape) / 2**index)
    return net.to(dtype)


@pytest.mark.parametrize("dtype", PINNED, ids=str)
def test_fingerprints_keep_the_values_they_had(dtype):
    weights, keypoints = PINNED[dtype]
    assert weights_fingerprint(SimpleNamespace(networks=(network(dtype), network(dtype)))) == weights
    assert keypoint_detector_fingerprint(SimpleNamespace(kp_detector=network(dtype))) == keypoints


def test_the_keypoint_fingerprint_ignores_the_dtype_and_the_cache_key_does_not():
    assert state_dicts_digest([network(torch.float16)], as_float32=True) == state_dicts_digest([network()],
                                                                                                as_float32=True)
    assert state_dicts_digest([network(torch.float16)]) != state_dicts_digest([network()])


def test_every_value_name_and_network_counts():
    reference = state_dicts_digest([network(), network()])
    changed = network()
    with torch.no_grad():
        changed[1].running_var[2] += 2**-10
    renamed = nn.Sequential()
    renamed.add_module("conv", network()[0])
    renamed.add_module("1", network()[1])
    assert len({reference, state_dicts_digest([network(), changed]), state_dicts_digest([network(), renamed]),
                state_dicts_digest([network()])}) == 4
    assert state_dicts_digest([network(), network()]) == reference

