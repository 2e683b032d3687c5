"""Are the per-frame graphs convertible by torch-tensorrt?  Checked against its own converter registry.

torch-tensorrt registers each converter with the ``@dynamo_tensorrt_converter(<op>)``
decorator in ``torch_tensorrt/dynamo/conversion/``.  The wheel installs only
where TensorRT's libraries do, but its Python source can be read anywhere:
this module reads the decorators out of the wheel (``pip download --no-deps
torch-tensorrt``) and checks every core-ATen op of the graphs the TensorRT
backend exports (float16, :func:`engine.backends.tensorrt.graphs_to_compile`)
against them.  It also reads, from the same source, the signature of
every torch-tensorrt function that ``engine/backends/tensorrt.py`` calls, and
checks that each keyword argument the backend passes is a named parameter of
it (a keyword swallowed by ``**kwargs`` would be silently ignored), and that
the release builds strongly typed networks for it (see
:func:`engine.backends.tensorrt.strong_typing_keywords`).

    python -m engine.tensorrt_ops                      # downloads the wheel matching torch, checks vox-adv-256
    python -m engine.tensorrt_ops --wheel torch_tensorrt-2.13.0-*.whl --config configs/vox-256.yaml
"""

from __future__ import annotations

import argparse
import ast
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import torch

CONVERSION_PACKAGE = "torch_tensorrt/dynamo/conversion/"
DECORATOR = "dynamo_tensorrt_converter"
LOWERING_PASSES = "torch_tensorrt/dynamo/lowering/passes/"
PACKAGE = "torch_tensorrt"
BACKEND_SOURCE = Path(__file__).resolve().parent / "backends" / "tensorrt.py"
INTERPRETER = "torch_tensorrt/dynamo/conversion/_TRTInterpreter.py"


def converter_registry(wheel: Path) -> set[str]:
    """Every op torch-tensorrt registers a converter for, as written in the decorators.

    e.g. "torch.ops.aten.convolution.default", "torch.ops.aten.grid_sampler" (an
    overload packet: all its overloads), "operator.getitem".
    """
    registered = set()
    with zipfile.ZipFile(wheel) as archive:
        for name in archive.namelist():
            if not (name.startswith(CONVERSION_PACKAGE) and name.endswith(".py")):
                continue
            for node in ast.walk(ast.parse(archive.read(name))):
                if isinstance(node, ast.Call) and _called_name(node.func) == DECORATOR:
                    key = node.args[0] if node.args else next((k.value for k in node.keywords if k.arg == "key"), None)
                    if key is not None:
                        registered.add(ast.unparse(key))
    if not registered:
        raise ValueError(f"{wheel}: no {DECORATOR} decorators under {CONVERSION_PACKAGE}; is this a torch-tensorrt wheel?")
    return registered


def erased_in_lowering(wheel: Path) -> set[str]:
    """Ops that torch-tensorrt's lowering passes delete from every graph before conversion, as their source says.

    A pass counts when ``lowering/passes/_aten_lowering_pass.py`` lists it in a
    ``*_pass_list`` and its name says it removes (``remove_*``; a ``replace_*``
    pass swaps an op for others, which would need checking in turn); an op
    counts when that pass's module compares ``node.target`` with it and erases
    nodes.  E.g. "torch.ops.aten._assert_tensor_metadata.default": ``torch.export``
    puts one before every dtype conversion, and it needs no converter.
    """
    with zipfile.ZipFile(wheel) as archive:
        sources = {name: archive.read(name) for name in archive.namelist() if name.startswith(LOWERING_PASSES)}
    listed = set()
    for node in ast.walk(ast.parse(sources.get(LOWERING_PASSES + "_aten_lowering_pass.py", b""))):
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id.endswith("_pass_list") for t in node.targets):
            listed |= {element.id for element in getattr(node.value, "elts", ()) if isinstance(element, ast.Name)}
    erased = set()
    for name in sorted(n for n in listed if n.startswith("remove_")):
        source = sources.get(f"{LOWERING_PASSES}{name}.py")
        if source is None or b"erase_node" not in source:
            continue
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Compare) and ast.unparse(node.left) == "node.target":
                erased |= {ast.unparse(c) for c in node.comparators if ast.unparse(c).startswith("torch.ops.")}
    return erased


def _called_name(function: ast.expr) -> str | None:
    if isinstance(function, ast.Name):
        return function.id
    if isinstance(function, ast.Attribute):
        return function.attr
    return None


def unconvertible(targets: set[str], registry: set[str], erased: set[str] = frozenset()) -> list[str]:
    """The targets (as :func:`engine.export.aten_targets` names them) with no registered converter that lowering
    does not erase either (``erased``: see :func:`erased_in_lowering`)."""
    missing = []
    for target in sorted(targets):
        if target == "<built-in function getitem>":
            candidates = {"operator.getitem"}
        else:
            namespace, op, *overload = target.split(".")
            candidates = {f"torch.ops.{target}", f"torch.ops.{namespace}.{op}"}
        if not candidates & (registry | erased):
            missing.append(target)
    return missing


def torch_tensorrt_calls(source: str) -> dict[str, set[str]]:
    """The torch-tensorrt functions ``source`` calls, by dotted name under the package, with the keywords passed.

    A call counts when its function is an attribute chain through the name
    ``torch_tensorrt`` (``torch_tensorrt.save(...)``, ``self.torch_tensorrt.dynamo.compile(...)``):
    e.g. {"dynamo.compile": {"arg_inputs", "min_block_size"}, "load": set()}.
    """
    calls: dict[str, set[str]] = {}
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call):
            continue
        chain, function = [], node.func
        while isinstance(function, ast.Attribute):
            chain.insert(0, function.attr)
            function = function.value
        if isinstance(function, ast.Name):
            chain.insert(0, function.id)
        if PACKAGE in chain[:-1]:
            name = ".".join(chain[chain.index(PACKAGE) + 1:])
            calls.setdefault(name, set()).update(keyword.arg for keyword in node.keywords if keyword.arg)
    return calls


def signature_mismatches(wheel: Path, calls: dict[str, set[str]]) -> list[str]:
    """What in ``calls`` the wheel's source does not take: a function it does not define, or a keyword that is
    not a named parameter.  ``dynamo.compile`` is looked up as a top-level ``def compile`` in the modules directly
    inside ``torch_tensorrt/dynamo/`` (re-exports lead there).
    """
    sources = _python_sources(wheel)
    problems = []
    for dotted, keywords in sorted(calls.items()):
        parameters = _parameters(sources, dotted)
        if parameters is None:
            problems.append(f"{PACKAGE}.{dotted}: no such function in {wheel.name}")
            continue
        for keyword in sorted(keywords - parameters):
            problems.append(f"{PACKAGE}.{dotted}: no parameter {keyword!r} in {wheel.name}")
    return problems


def strong_typing(wheel: Path) -> str | None:
    """How the release builds the backend's networks strongly typed (each layer in its graph's dtype), or None.

    Either ``dynamo.compile`` takes ``use_explicit_typing`` (2.10 to 2.12),
    which the backend then passes as True, or, with no such parameter, its
    ``TRTInterpreter`` creates every network with TensorRT's STRONGLY_TYPED flag (2.13).
    """
    sources = _python_sources(wheel)
    if "use_explicit_typing" in (_parameters(sources, "dynamo.compile") or set()):
        return "dynamo.compile takes use_explicit_typing, passed as True"
    if b"NetworkDefinitionCreationFlag.STRONGLY_TYPED" in sources.get(INTERPRETER, b""):
        return "dynamo.compile has no use_explicit_typing; every network is created STRONGLY_TYPED"
    return None


def _python_sources(wheel: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(wheel) as archive:
        return {name: archive.read(name) for name in archive.namelist() if name.endswith(".py")}


def _parameters(sources: dict[str, bytes], dotted: str) -> set[str] | None:
    """The named parameters of the torch-tensorrt function ``dotted`` (e.g. "dynamo.compile"), None if undefined."""
    *package, function = dotted.split(".")
    folder = "/".join([PACKAGE, *package]) + "/"
    definitions = [node for name, source in sources.items()
                   if name.startswith(folder) and "/" not in name[len(folder):]
                   for node in ast.parse(source).body
                   if isinstance(node, ast.FunctionDef) and node.name == function]
    if not definitions:
        return None
    return {argument.arg for definition in definitions for argument in
            (*definition.args.posonlyargs, *definition.args.args, *definition.args.kwonlyargs)}


def download_wheel(directory: Path) -> Path:
    """``pip download --no-deps`` the torch-tensorrt release built for the installed torch's major.minor."""
    major, minor = torch.__version__.split("+")[0].split(".")[:2]
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet", "-d",
               str(directory), f"torch-tensorrt=={major}.{minor}.*"]
    result = subprocess.run(command, capture_output=True, text=True)
    wheels = sorted(directory.glob("torch_tensorrt-*.whl"))
    if result.returncode != 0 or not wheels:
        raise RuntimeError(f"could not download torch-tensorrt {major}.{minor}: {result.stderr.strip()[-500:]}")
    return wheels[-1]


def main(argv: list[str] | None = None) -> int:
    from .backends.tensorrt import export_graph, graphs_to_compile
    from .export import aten_targets
    from .model import load_model

    parser = argparse.ArgumentParser(prog="python -m engine.tensorrt_ops", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--wheel", type=Path, help="a torch-tensorrt wheel (default: download the one matching torch)")
    parser.add_argument("--config", default=str(Path(__file__).resolve().parent.parent / "configs" / "vox-adv-256.yaml"))
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as directory:
        try:
            wheel = args.wheel or download_wheel(Path(directory))
            registry = converter_registry(wheel)
            erased = erased_in_lowering(wheel)
        except (OSError, RuntimeError, ValueError, zipfile.BadZipFile) as error:
            print(f"error: no torch-tensorrt converter registry to check against: {error}", file=sys.stderr)
            return 2
        graphs = graphs_to_compile(load_model(args.config, None))
        print(f"{wheel.name}: {len(registry)} converters; lowering erases {', '.join(sorted(erased))}")
        calls = torch_tensorrt_calls(BACKEND_SOURCE.read_text())
        mismatches = signature_mismatches(wheel, calls)
        typing = strong_typing(wheel)
        failed = bool(mismatches) or typing is None
        print("calls from engine/backends/tensorrt.py: " + "; ".join(
            f"{PACKAGE}.{name}({', '.join(sorted(keywords))})" for name, keywords in sorted(calls.items())))
        print("  " + ("; ".join(mismatches) if mismatches else "every function exists and takes every keyword passed"))
        print("strongly typed networks: " + (typing or "NO: neither use_explicit_typing nor a STRONGLY_TYPED network"))
        for name, (module, inputs) in graphs.items():
            targets = aten_targets(export_graph(module, inputs))
            missing = unconvertible(targets, registry, erased)
            failed |= bool(missing)
            print(f"{name}: {len(targets)} core ATen ops, " + (f"NO CONVERTER for {missing}" if missing else "all convertible"))
            print("  " + ", ".join(sorted(targets)))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
