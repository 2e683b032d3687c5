"""Reading original FOMM checkpoints safely and loading them strictly.

A released ``.pth.tar`` is a ``torch.save`` dict with ``generator`` and
``kp_detector`` state dicts (plus discriminator and optimizer entries that
inference ignores).  It is a pickle, so it is read with
``torch.load(weights_only=True)``: a file that tries to run code is refused,
never executed.  The same state dicts as one ``.safetensors`` file (tensor
names ``generator.<key>`` and ``kp_detector.<key>``) load too, with no pickle.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Mapping

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from .errors import CheckpointError

NETWORKS = ("generator", "kp_detector")
RELEASED_CHECKPOINT = "vox-adv-cpk.pth.tar is 228 MB, md5 8a45a24037871c045fbb8a6a8aa95ebc"
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
    try:
        with warnings.catch_warnings():  # torch's note on the pickle protocol of a legacy file: not the user's concern
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            document = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # garbage bytes surface as any error the unpickler happens to hit
        raise unreadable_checkpoint(path, error) from None

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
    return split_networks(tensors, str(path))


def split_networks(tensors: Mapping[str, torch.Tensor], where: str) -> dict[str, dict[str, torch.Tensor]]:
    """Tensors named ``generator.<key>`` and ``kp_detector.<key>`` -> the two state dicts; raises
    :class:`CheckpointError` (naming ``where``) for a tensor of neither."""
    state_dicts: dict[str, dict[str, torch.Tensor]] = {network: {} for network in NETWORKS}
    for name, tensor in tensors.items():
        network, _, key = name.partition(".")
        if network not in state_dicts:
            raise CheckpointError(f"{where}: unexpected tensor {name!r}; expected names starting with {NETWORKS}")
        state_dicts[network][key] = tensor
    return state_dicts


def unreadable_checkpoint(path: Path, error: Exception) -> CheckpointError:
    """Our own account of why ``torch.load(path, weights_only=True)`` failed, whole.

    torch's text advises re-running with ``weights_only=False`` (which would
    execute whatever the file holds); it is not repeated.  A pickle that asks
    to call a function is refused as such; everything else is a file that is
    truncated or not a checkpoint at all, described from its first bytes.
    Either way nothing in the file was executed: the weights-only unpickler
    builds tensors and plain containers only.
    """
    unsafe = _UNSAFE_GLOBAL.search(str(error))
    if unsafe:
        return CheckpointError(
            f"refusing to load {path}: it contains pickled code (a call to {unsafe.group(1).rstrip('.,')}), not only "
            "tensors. A genuine FOMM checkpoint holds tensors only; this file is corrupt or malicious. Nothing from "
            "it was executed: it was read with torch's weights-only unpickler, which stops at the first such call."
        )
    size = path.stat().st_size
    with open(path, "rb") as stream:
        head = stream.read(64)
    return CheckpointError(
        f"{path} ({size:,} bytes) is truncated or corrupt: {_what_the_file_is(head, error)}. Nothing from it was "
        f"executed. Expected a .pth.tar saved by torch.save ({RELEASED_CHECKPOINT}); download it again."
    )


def _what_the_file_is(head: bytes, error: Exception) -> str:
    """What a file torch.load could not read looks like, judged by its first bytes and torch's error."""
    if not head:
        return "the file is empty"
    text = head.lstrip().lower()
    if text.startswith((b"<!doctype html", b"<html", b"<?xml", b"<head", b"<body")):
        return "it is a web page, not a checkpoint (a download link that served an error or quota page?)"
    if head.startswith(b"PK\x03\x04"):
        return ("it is a zip archive, as torch.save writes, but an incomplete or damaged one (torch's reader says: "
                f"{_first_sentence(error)}); the file was probably cut short")
    if head[:1] == b"\x80":
        return (f"it is a pickle, as old torch.save files are, but torch could not read it through "
                f"({_first_sentence(error)})")
    return "it is neither a zip archive nor a pickle, the two forms torch.save writes"


def _first_sentence(error: Exception) -> str:
    """The part of torch's message that describes the file, without its advice on weights_only."""
    text = str(error)
    marker = "WeightsUnpickler error:"
    if marker in text:
        text = text.split(marker, 1)[1]
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    first = lines[0]
    cut = first.find(". ")
    return first[:cut] if cut > 0 else first.rstrip(".")


def load_weights_strictly(module: nn.Module, state_dict: Mapping[str, torch.Tensor], what: str) -> None:
    """Copy ``state_dict`` into ``module``, requiring every key to be used and none missing.

    ``what`` names the network and config in errors, e.g. "kp_detector of config vox-adv-256".
    A shape mismatch names the parameter and both shapes; integers where the
    network holds floating point numbers, and NaN or infinite values, are
    refused naming the tensor.
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
        _check_values(state_dict[key], tensor.dtype, f"the checkpoint's {what}: tensor {key}")
    # assign: the module may have been built on the meta device; its tensors become the checkpoint's.
    module.load_state_dict({key: state_dict[key].to(tensor.dtype) for key, tensor in expected.items()},
                           strict=True, assign=True)


def _check_values(tensor: torch.Tensor, expected: torch.dtype, what: str) -> None:
    """Where the network holds floating point numbers, the checkpoint must too, all finite.

    Integer buffers (BatchNorm's ``num_batches_tracked``, unused at inference) are not checked.
    """
    if not expected.is_floating_point:
        return
    if not tensor.is_floating_point():
        raise CheckpointError(f"{what} holds {tensor.dtype} values where the network expects floating point numbers")
    finite = torch.isfinite(tensor)
    if not bool(finite.all()):
        bad = tensor[~finite]
        raise CheckpointError(
            f"{what} holds {int(bad.isnan().sum()):,} NaN and {int(bad.isinf().sum()):,} infinite values "
            f"(of {tensor.numel():,}): these weights cannot render anything"
        )


def _preview(keys: list[str], limit: int = 4) -> str:
    shown = ", ".join(keys[:limit])
    return f"[{shown}{', ...' if len(keys) > limit else ''}]"
