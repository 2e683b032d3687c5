"""Command line of ``run_live.py``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from engine import EngineError, load_model
from engine.weights import (
    DEFAULT_CHECKPOINT_MD5,
    DEFAULT_WEIGHTS_URLS,
    default_checkpoint_path,
    file_md5,
    find_checkpoint,
    download_weights,
)

from .doctor import run_doctor

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "vox-adv-256.yaml"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="run_live.py",
        description="Animate an avatar with your webcam and stream it to a virtual camera.",
    )
    parser.add_argument("--config", default=str(DEFAULT_CONFIG), help="FOMM model config (default: %(default)s)")
    parser.add_argument(
        "--checkpoint",
        help=f"model weights, .pth.tar or .safetensors (default: the first found of {default_checkpoint_path()} "
        "and ./vox-adv-cpk.pth.tar); with --download-weights, where to save them",
    )
    parser.add_argument("--device", default="cuda" if _cuda_available() else "cpu", help="cpu or cuda (default: %(default)s)")
    first_run = parser.add_argument_group("first run")
    first_run.add_argument("--download-weights", action="store_true",
                           help="download and verify vox-adv-cpk.pth.tar (228 MB), then exit")
    first_run.add_argument("--weights-url", action="append", metavar="URL",
                           help="download from this URL instead of the published mirrors (repeatable: tried in order)")
    first_run.add_argument("--weights-md5", default=DEFAULT_CHECKPOINT_MD5,
                           help="expected md5 of the weights (default: the released file's, %(default)s)")
    first_run.add_argument("--doctor", action="store_true", help="check this machine and the set-up, then exit")
    return parser


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.download_weights:
        return _download(args)
    if args.doctor:
        findings = run_doctor(args.checkpoint, args.weights_md5)
        for finding in findings:
            print(finding)
        failed = sum(f.status == "FAIL" for f in findings)
        print(f"\n{failed} problem(s) found." if failed else "\nAll set.")
        return 1 if failed else 0
    try:
        checkpoint = find_checkpoint(args.checkpoint)
        model = load_model(args.config, checkpoint, device=args.device)
    except EngineError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"loaded {checkpoint} ({model.config.name}) on {args.device}")
    print("The live loop (webcam, preview, virtual camera) is not part of this version yet.", file=sys.stderr)
    return 2


def _download(args: argparse.Namespace) -> int:
    destination = Path(args.checkpoint) if args.checkpoint else default_checkpoint_path()
    if destination.is_file() and file_md5(destination) == args.weights_md5.lower():
        print(f"{destination} is already there and its md5 matches; nothing to do.")
        return 0
    try:
        download_weights(destination, args.weights_url or DEFAULT_WEIGHTS_URLS, args.weights_md5)
    except EngineError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0
