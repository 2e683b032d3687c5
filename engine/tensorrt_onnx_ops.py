"""Can TensorRT's ONNX parser take the ONNX graphs the onnxruntime backend exports?  Asked of the parser's own sources.

The onnxruntime backend tries ONNX Runtime's TensorRT provider first, which
hands the graphs to TensorRT's ONNX parser (onnx-tensorrt).  Two sources
answer, best first:

- TensorRT itself, where it is installed: each file is parsed by
  ``tensorrt.OnnxParser`` and every parser error is reported;
- onnx-tensorrt's operator support matrix (``docs/operators.md`` of the
  parser's repository), downloaded from GitHub (``--ref``, default main) or
  read from a local copy (``--matrix``): every op type of the graphs must be
  marked supported there.

    python -m engine.tensorrt_onnx_ops                          # vox-adv-256; TensorRT if installed, else GitHub
    python -m engine.tensorrt_onnx_ops --matrix operators.md    # a copy of onnx-tensorrt's docs/operators.md
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .model import FirstOrderModel

MATRIX_URL = "https://raw.githubusercontent.com/onnx/onnx-tensorrt/{ref}/docs/operators.md"
# A row of the matrix: "| GridSample | Y | FP32, FP16 |" (the supported column may read "Y [EXPERIMENTAL]").
_MATRIX_ROW = re.compile(r"^\|\s*([A-Za-z][A-Za-z0-9]*)\s*\|\s*([YN])\b", re.MULTILINE)


def support_matrix(text: str) -> dict[str, bool]:
    """Op type -> supported, from the text of onnx-tensorrt's ``docs/operators.md``."""
    matrix = {name: mark == "Y" for name, mark in _MATRIX_ROW.findall(text)}
    if not matrix:
        raise ValueError("no operator rows ('| Name | Y/N |') found: is this onnx-tensorrt's docs/operators.md?")
    return matrix


def download_matrix(ref: str = "main") -> str:
    url = MATRIX_URL.format(ref=ref)
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.read().decode()
    except OSError as error:
        raise RuntimeError(f"could not download {url}: {error}") from error


def onnx_op_types(path: Path) -> set[str]:
    """The op types of an ONNX file's main graph, e.g. {"Conv", "GridSample"}; other domains than ONNX's are an error."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    foreign = sorted({f"{node.domain}::{node.op_type}" for node in graph.node if node.domain not in ("", "ai.onnx")})
    if foreign:
        raise ValueError(f"{path.name} has ops outside the ONNX domain, which the parser only takes as plugins: {foreign}")
    return {node.op_type for node in graph.node}


def unsupported_by_matrix(op_types: set[str], matrix: dict[str, bool]) -> list[str]:
    """The op types the matrix marks unsupported or does not list."""
    return sorted(op for op in op_types if not matrix.get(op, False))


def tensorrt_parser_errors(path: Path) -> list[str]:
    """Parse ``path`` with the installed TensorRT's ONNX parser: its errors, empty when the whole graph imports."""
    import tensorrt

    logger = tensorrt.Logger(tensorrt.Logger.ERROR)
    builder = tensorrt.Builder(logger)
    explicit_batch = getattr(tensorrt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH", None)  # gone in TensorRT 10
    network = builder.create_network(0 if explicit_batch is None else 1 << int(explicit_batch))
    parser = tensorrt.OnnxParser(network, logger)
    if parser.parse(path.read_bytes()):
        return []
    return [str(parser.get_error(i)) for i in range(parser.num_errors)] or ["the parser failed without an error message"]


def tensorrt_version() -> str | None:
    try:
        import tensorrt
    except Exception:  # ImportError, or its libraries failing to load
        return None
    return tensorrt.__version__


def export_graphs(model: "FirstOrderModel", directory: Path) -> dict[str, Path]:
    """Export the keypoint detector and render step into ``directory`` as the onnxruntime backend does."""
    from .export import export_keypoints_onnx, export_render_onnx

    paths = {"keypoints": directory / "keypoints.onnx", "render": directory / "render.onnx"}
    export_keypoints_onnx(model, paths["keypoints"])
    export_render_onnx(model, paths["render"])
    return paths


def main(argv: list[str] | None = None) -> int:
    from .model import load_model

    parser = argparse.ArgumentParser(prog="python -m engine.tensorrt_onnx_ops", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--matrix", type=Path, help="a local copy of onnx-tensorrt's docs/operators.md")
    parser.add_argument("--ref", default="main", help="the onnx-tensorrt branch or tag to download the matrix from")
    parser.add_argument("--config", default=str(Path(__file__).resolve().parent.parent / "configs" / "vox-adv-256.yaml"))
    args = parser.parse_args(argv)

    use_tensorrt = args.matrix is None and tensorrt_version() is not None
    if use_tensorrt:
        print(f"asking TensorRT {tensorrt_version()}'s ONNX parser")
    else:
        try:
            matrix = support_matrix(args.matrix.read_text() if args.matrix else download_matrix(args.ref))
        except (OSError, RuntimeError, ValueError) as error:
            print(f"error: no support matrix to check against: {error}", file=sys.stderr)
            return 2
        source = args.matrix or MATRIX_URL.format(ref=args.ref)
        print(f"onnx-tensorrt support matrix {source}: {sum(matrix.values())} of {len(matrix)} ops supported")
    failed = False
    with tempfile.TemporaryDirectory() as directory:
        for name, path in export_graphs(load_model(args.config, None), Path(directory)).items():
            op_types = onnx_op_types(path)
            problems = tensorrt_parser_errors(path) if use_tensorrt else unsupported_by_matrix(op_types, matrix)
            failed |= bool(problems)
            print(f"{name}: {len(op_types)} ONNX op types, " + (f"NOT SUPPORTED: {problems}" if problems else "all supported"))
            print("  " + ", ".join(sorted(op_types)))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
