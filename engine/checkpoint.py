"""Reading original FOMM checkpoints safely and loading them strictly.

A released ``.pth.tar`` is a ``torch.save`` dict with ``generator`` and
``kp_detector`` state dicts (plus discriminator and optimizer entries that
inference ignores).  It is a pickle, so it is read with
``torch.load(weights_only=True)``: a file that tries to run code is refused,
never executed.  The same state dicts as one ``.safetensors`` file (tensor
names ``generator.<key>`` and ``kp_detector.<key>``) load too, with no pickle.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Mapping

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from .errors import CheckpointError

NETWORKS = ("generator", "kp_detector")
_UNSAFE_GLOBAL = re.compile(r"unsupported GLOBAL (\S+)", re.IGNORECASE)


def read_checkpoint(path: str | Path) -> dict[str, dict[str, torch.Tensor]]:
    """Read the ``generator`` and ``kp_detector`` state dicts of an original checkpoint.

    Tensors are returned on the CPU.  Raises :class:`CheckpointError` for a
    missing, truncated, corrupt or unsafe file, or one without both networks.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        return read_safetensors(path)
    size = path.stat().st_size
    try:
        document = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        unsafe = _UNSAFE_GLOBAL.search(str(error))
        if unsafe:
            raise CheckpointError(
                f"refusing to load {path}: it contains pickled code ({unsafe.group(1).rstrip('.,')}), not only "
                "tensors. A genuine FOMM checkpoint holds tensors only; this file is corrupt or malicious. "
                "Nothing from it was executed."
            ) from None
        raise _corrupt(path, size, error) from None
    except Exception as error:  # garbage bytes surface as any error the unpickler happens to hit
        raise _corrupt(path, size, error) from None

    if not isinstance(document, Mapping):
        raise CheckpointError(
            f"{path} is not a FOMM checkpoint: expected a dict with {list(NETWORKS)}, found {type(document).__name__}"
        )
    missing = [name for name in NETWORKS if name not in document]
    if missing:
        raise CheckpointError(
            f"{path} is not a FOMM checkpoint: entries {missing} are missing (found {sorted(map(str, document))})"
        )
    state_dicts = {}
    for name in NETWORKS:
        entry = document[name]
        if not isinstance(entry, Mapping) or not all(isinstance(v, torch.Tensor) for v in entry.values()):
            raise CheckpointError(f"{path}: entry {name!r} is not a state dict of tensors")
        state_dicts[name] = dict(entry)
    return state_dicts


def read_safetensors(path: Path) -> dict[str, dict[str, torch.Tensor]]:
    """Read state dicts stored as one safetensors file with names ``generator.<key>`` and ``kp_detector.<key>``."""
    try:
        tensors = load_file(str(path), device="cpu")
    except (SafetensorError, OSError) as error:
        raise CheckpointError(f"{path} is not a readable safetensors file: {error}") from None
    state_dicts: dict[str, dict[str, torch.Tensor]] = {network: {} for network in NETWORKS}
    for name, tensor in tensors.items():
        network, _, key = name.partition(".")
        if network not in state_dicts:
            raise CheckpointError(f"{path}: unexpected tensor {name!r}; expected names starting with {NETWORKS}")
        state_dicts[network][key] = tensor
    return state_dicts


def _corrupt(path: Path, size: int, error: Exception) -> CheckpointError:
    first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return CheckpointError(
        f"{path} ({size:,} bytes) is truncated or corrupt: torch.load failed with: {first_line[:200]}. "
        "Expected a .pth.tar saved by torch.save (vox-adv-cpk.pth.tar is 228 MB, "
        "md5 8a45a24037871c045fbb8a6a8aa95ebc); download it again."
    )


def load_weights_strictly(module: nn.Module, state_dict: Mapping[str, torch.Tensor], what: str) -> None:
    """Copy ``state_dict`` into ``module``, requiring every key to be used and none missing.

    ``what`` names the network and config in errors, e.g. "kp_detector of config vox-adv-256".
    A shape mismatch names the parameter and both shapes.
    """
    expected = module.state_dict()
    missing = [key for key in expected if key not in state_dict]
    unexpected = [key for key in state_dict if key not in expected]
    if missing or unexpected:
        raise CheckpointError(
            f"the checkpoint's {what} does not match the architecture: "
            f"{len(missing)} missing keys {_preview(missing)}, {len(unexpected)} unexpected keys {_preview(unexpected)}. "
            "Is the config the one the checkpoint was trained with?"
        )
    for key, tensor in expected.items():
        if state_dict[key].shape != tensor.shape:
            raise CheckpointError(
                f"the checkpoint's {what} does not fit the config: parameter {key} has shape "
                f"{tuple(state_dict[key].shape)} in the checkpoint but the config expects {tuple(tensor.shape)}"
            )
    # assign: the module may have been built on the meta device; its tensors become the checkpoint's.
    module.load_state_dict({key: state_dict[key].to(tensor.dtype) for key, tensor in expected.items()},
                           strict=True, assign=True)


def _preview(keys: list[str], limit: int = 4) -> str:
    shown = ", ".join(keys[:limit])
    return f"[{shown}{', ...' if len(keys) > limit else ''}]"
