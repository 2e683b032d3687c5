"""CI: the project's full dependency set resolves, from wheels only, for every Python it claims to support.

    python .ci/resolve_check.py [--extras dev] [--python 3.12 ...]

For each Python version, one `pip install --dry-run --only-binary=:all: --python-version X.Y` of the
repository with its extras, for a Linux x86_64 machine (manylinux_2_28, like CI's), into an empty target
(--ignore-installed): pip resolves the whole set and installs nothing.  The versions run side by side.
Prints the versions resolved for each Python, and exits 1 if any Python does not resolve.

pip evaluates environment markers for the Python that runs it, not for --python-version (pytest's
`exceptiongroup; python_version < "3.11"` is missing from a 3.10 set resolved by Python 3.11).  So each
version is resolved by that version's interpreter where one is found (pythonX.Y on PATH, or pyenv's);
a version without one is resolved by this Python, and its line says so.

Nothing large is downloaded: with fast-deps, pip reads each wheel's metadata through HTTP range requests
instead of fetching the wheel (PyPI's torch wheel for Linux alone is over 500 MB, its CUDA libraries more).
That takes a recent pip: measured here, pip 26.3 received 25 MB for one Python where pip 23.2.1 (what
Python 3.11's venv brings) fetched the wheels whole, 4.7 GB for the five Pythons.  So the check runs in
throwaway virtual environments of its own with a current pip.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SUPPORTED = ("3.10", "3.11", "3.12", "3.13", "3.14")  # keep in step with requires-python in pyproject.toml
# The dependencies whose versions matter most, printed first for each Python.
HEADLINE = ("torch", "numpy", "mediapipe", "opencv-contrib-python", "onnx", "onnxruntime", "av", "pyvirtualcam",
            "matplotlib", "protobuf")
# A glibc 2.28 Linux x86_64 machine accepts every manylinux wheel up to 2.28; pip does not expand the tag itself.
PLATFORMS = [f"manylinux_2_{minor}_x86_64" for minor in range(28, 4, -1)] + \
    ["manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64"]


PIP = "pip>=26"  # fast-deps that reads metadata only: see the module docstring


def interpreter(version: str) -> str | None:
    """A Python executable of this version: pythonX.Y on PATH, pyenv's, or None."""
    candidates = [shutil.which(f"python{version}")]
    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    candidates += sorted(map(str, pyenv.glob(f"{version}.*/bin/python{version}")), reverse=True)
    for candidate in filter(None, candidates):
        probe = subprocess.run([candidate, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                               capture_output=True, text=True)
        if probe.returncode == 0 and probe.stdout.strip() == version:
            return candidate
    return None


def resolver_pip(python: str, venv: Path) -> list[str]:
    """The command prefix of a current pip in a new virtual environment of ``python`` at ``venv``."""
    for command in ([python, "-m", "venv", str(venv)],
                    [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                     "--upgrade", PIP]):
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed:\n{result.stdout}{result.stderr}")
    return [str(venv / "bin" / "python"), "-m", "pip"]


def resolve(python: str, extras: str, work: Path) -> tuple[str, str, dict[str, str] | None, str, float]:
    """(python, who resolved, {distribution: version} or None, pip's last lines on failure, seconds)."""
    start = time.monotonic()
    executable = interpreter(python)
    resolver = f"Python {python}" if executable else \
        f"Python {platform.python_version()}: no {python} interpreter here, so markers are evaluated for this one"
    try:
        pip = resolver_pip(executable or sys.executable, work / f"venv-{python}")
    except RuntimeError as error:
        return python, resolver, None, str(error), time.monotonic() - start
    report = work / f"report-{python}.json"
    command = [*pip, "install", "--dry-run", "--use-feature=fast-deps",
               "--only-binary=:all:", "--python-version", python, "--implementation", "cp",
               *[flag for platform in PLATFORMS for flag in ("--platform", platform)],
               "--target", str(work / f"target-{python}"), "--ignore-installed", "--report", str(report),
               f"{REPO}[{extras}]" if extras else str(REPO)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900)
    seconds = time.monotonic() - start
    if result.returncode != 0:
        errors = [line for line in (result.stdout + result.stderr).splitlines()
                  if line.startswith("ERROR") or "depends on" in line or "conflict is caused" in line]
        return python, resolver, None, "\n".join(errors[-40:]), seconds
    installs = json.loads(report.read_text())["install"]
    resolved = {item["metadata"]["name"].lower(): item["metadata"]["version"] for item in installs}
    return python, resolver, resolved, "", seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--extras", default="dev", help='extras to resolve with the project (default "dev")')
    parser.add_argument("--python", action="append", choices=SUPPORTED, help="only these versions (repeatable)")
    args = parser.parse_args()
    versions = args.python or list(SUPPORTED)
    with tempfile.TemporaryDirectory(prefix="resolve-check-") as tmp:
        with ThreadPoolExecutor(max_workers=len(versions)) as pool:
            results = list(pool.map(lambda version: resolve(version, args.extras, Path(tmp)), versions))
    failed = []
    for python, resolver, resolved, errors, seconds in results:
        if resolved is None:
            failed.append(python)
            print(f"Python {python}: DOES NOT RESOLVE ({seconds:.0f} s, resolved by {resolver})\n{errors}\n")
            continue
        headline = ", ".join(f"{name} {resolved[name]}" for name in HEADLINE if name in resolved)
        rest = ", ".join(f"{name} {version}" for name, version in sorted(resolved.items())
                         if name not in HEADLINE and name != "fomm-live")
        print(f"Python {python}: resolves ({seconds:.0f} s, resolved by {resolver}): {headline}\n  and {rest}\n")
    if failed:
        print(f"resolver check FAILED for Python {', '.join(failed)} (.[{args.extras}], wheels only)")
        return 1
    print(f"resolver check passed for Python {', '.join(versions)} (.[{args.extras}], wheels only)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
