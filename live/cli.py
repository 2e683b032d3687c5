"""Command line of ``run_live.py`` and of the ``fomm-live`` command the package installs."""

from __future__ import annotations

import argparse
import logging
import sys
import traceback
from pathlib import Path

from engine import EngineError
from engine.backends import BACKENDS
from engine.backends import PRECISIONS
from engine.weights import (DEFAULT_CHECKPOINT_MD5, DEFAULT_MODEL, DEFAULT_WEIGHTS_URLS, default_checkpoint_path,
                            download_weights, file_md5)

from .app import run_live
from .doctor import run_doctor
from .logs import setup_logging

log = logging.getLogger(__name__)

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Animate an avatar with your webcam and stream it to a virtual camera.",
    )
    parser.add_argument("--config", default=DEFAULT_MODEL,
                        help="a released model's name (its config ships with the tool) or a FOMM YAML config "
                        "(default: %(default)s)")
    parser.add_argument(
        "--checkpoint",
        help=f"model weights, .pth.tar or .safetensors (default: the first found of {default_checkpoint_path()} "
        "and ./vox-adv-cpk.pth.tar); with --download-weights, where to save them",
    )
    parser.add_argument("--device", default="cuda" if _cuda_available() else "cpu", help="cpu or cuda (default: %(default)s)")
    parser.add_argument("--backend", default="auto", choices=["auto", *BACKENDS],
                        help="inference backend (default: %(default)s, the fastest that works here)")
    parser.add_argument("--precision", choices=sorted(PRECISIONS),
                        help="float32; float16 / bfloat16 with eager or compile on a GPU; float16 with tensorrt (its "
                        "only one) or openvino-gpu; bfloat16 (where the CPU runs it natively) or int8 with openvino "
                        "(default: the backend's own)")
    live = parser.add_argument_group("live")
    live.add_argument("--source", help="avatar: an image, or a folder of images (keys 1-9, A/D switch)")
    live.add_argument("--camera", default="0", help="webcam index, or a video file to use as the camera (default: 0)")
    live.add_argument("--output", help="also write the output to this video file (.mp4)")
    live.add_argument("--no-preview", action="store_true", help="no preview window (with a video file as the "
                      "camera: render the whole file as fast as possible)")
    live.add_argument("--max-frames", type=_positive_int, help="stop after this many output frames")
    live.add_argument("--relative", action=argparse.BooleanOptionalAction, default=True,
                      help="relative motion: move the avatar by your motion since calibration (default: on)")
    live.add_argument("--adapt_scale", action=argparse.BooleanOptionalAction, default=True,
                      help="scale the motion by the ratio of face sizes (default: on)")
    live.add_argument("--movement", type=_in_range(0.0, 3.0), default=1.0, help="movement multiplier, 0 to 3 (default: 1)")
    live.add_argument("--smoothing", type=_in_range(0.0, 0.9), default=0.0,
                      help="keypoint smoothing, 0 (none) to 0.9 (default: 0)")
    live.add_argument("--output-size", type=_size, metavar="WxH",
                      help="output frame size (default: 1280x720, or the model's 256x256 with --square)")
    live.add_argument("--square", action="store_true", help="send the bare animated square instead of pasting it "
                      "back into the full avatar picture")
    live.add_argument("--virtual-camera", action=argparse.BooleanOptionalAction, default=None,
                      help="stream to a virtual camera (default: on, except when rendering a file offline)")
    live.add_argument("--fps", type=float, default=30.0, help="virtual camera frame rate (default: 30)")
    live.add_argument("--global-hotkeys", action="store_true",
                      help="Ctrl+Alt+<key> hotkeys that work while another window has the focus (pynput)")
    parser.add_argument("--verbose", action="store_true",
                        help="also show debug messages and the libraries' own log lines (OpenCV, FFmpeg, mediapipe)")
    remote = parser.add_argument_group("remote rendering")
    remote.add_argument("--serve", action="store_true", help="run a render server for other machines' live tools "
                        "(prints the client's command line), until Ctrl-C")
    remote.add_argument("--host", default="127.0.0.1", help="--serve: address to listen on (default: %(default)s; "
                        "any other than loopback needs --token-file)")
    remote.add_argument("--port", type=_positive_int, default=8765, help="--serve: port (default: %(default)s)")
    remote.add_argument("--token-file", help="the shared secret: --serve reads it (writing a new token there if the "
                        "file is missing); the client reads it (else $FOMM_LIVE_TOKEN)")
    remote.add_argument("--cert", help="--serve: TLS certificate (PEM; default: a self-signed one kept in the data "
                        "directory)")
    remote.add_argument("--key", help="--serve: the certificate's private key (PEM)")
    remote.add_argument("--no-tls", action="store_true", help="--serve: plain ws://, only on a loopback address "
                        "behind a TLS-terminating proxy or tunnel on the same machine")
    remote.add_argument("--max-sessions", type=_positive_int, default=4,
                        help="--serve: most clients at once (default: %(default)s)")
    remote.add_argument("--remote", metavar="URL", help="render on this server (wss://HOST:PORT/v1/session)")
    remote.add_argument("--fingerprint", help="--remote: the server certificate's SHA-256 fingerprint, as the server "
                        "printed it (default: trust the first one seen from that server, then refuse another)")
    first_run = parser.add_argument_group("first run")
    first_run.add_argument("--download-weights", action="store_true",
                           help="download and verify vox-adv-cpk.pth.tar (228 MB), then exit")
    first_run.add_argument("--weights-url", action="append", metavar="URL",
                           help="download from this URL instead of the published mirrors (repeatable: tried in order)")
    first_run.add_argument("--weights-md5", default=DEFAULT_CHECKPOINT_MD5,
                           help="expected md5 of the weights (default: the released file's, %(default)s)")
    first_run.add_argument("--doctor", action="store_true", help="check this machine and the set-up, then exit")
    first_run.add_argument("--benchmark", action="store_true",
                           help="measure FPS on this machine, then exit; the options that follow are "
                           "benchmarks/fps.py's (see python benchmarks/fps.py --help)")
    return parser


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--benchmark" in argv:
        return _benchmark([a for a in argv if a != "--benchmark"])
    args = build_parser().parse_args(argv)
    log_file, why_no_log_file = setup_logging(verbose=args.verbose)
    if why_no_log_file:
        log.warning("%s", why_no_log_file)
    try:
        return _run(args, log_file)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # a bug: one line here, the whole story in the log file
        log.debug("unexpected error", exc_info=error)
        if log_file is None:
            traceback.print_exc()
        where = f"; the traceback is in {log_file}" if log_file else ""
        print(f"error: unexpected {type(error).__name__}: {error}{where}", file=sys.stderr)
        return 1


def _benchmark(argv: list[str]) -> int:
    """benchmarks/fps.py, which lies in the repository beside live/ (not in the package): found from any directory
    where the package is installed from a checkout (``pip install -e``), else refused with where to get it."""
    repository = Path(__file__).resolve().parent.parent
    if not (repository / "benchmarks" / "fps.py").is_file():
        print(f"error: --benchmark runs the repository's benchmarks/fps.py, which is not beside this installation "
              f"({repository}); run it from a checkout of the repository (pip install -e .)", file=sys.stderr)
        return 1
    if str(repository) not in sys.path:
        sys.path.insert(0, str(repository))
    from benchmarks.fps import run

    return run(argv)


def _run(args: argparse.Namespace, log_file: Path | None) -> int:
    if args.download_weights:
        return _download(args)
    if args.doctor:
        findings = run_doctor(args.checkpoint, args.weights_md5)
        for finding in findings:
            print(finding)
        failed = sum(f.status == "FAIL" for f in findings)
        print(f"\n{failed} problem(s) found." if failed else "\nAll set.")
        return 1 if failed else 0
    if args.serve:
        from .remote.server import serve  # aiohttp and the server only when serving

        return serve(args)
    return run_live(args, log_file)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {value}")
    return value


def _in_range(low: float, high: float):
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number from {low:g} to {high:g}, got {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"expected a number from {low:g} to {high:g}, got {value:g}")
        return value

    return parse


def _size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT like 1280x720, got {text!r}") from None
    if width < 16 or height < 16 or width % 2 or height % 2:
        raise argparse.ArgumentTypeError(f"expected even sizes of at least 16, got {text!r}")
    return width, height


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
