"""The FPS benchmark's report: summaries, speed-up ratios, Markdown tables, the chart, and comparing two runs.

JSON schema ``fomm-live-fps/2`` (what ``benchmarks/fps.py --json`` writes):

    {
      "schema": "fomm-live-fps/2",
      "created": "2026-11-30T01:00:00+00:00",          # UTC, ISO 8601
      "command": "python benchmarks/fps.py ...",        # exactly what was run
      "machine": {"device": "cuda:0" | "cpu", "device_name": str, "compute_capability": "9.0" | null,
                  "driver": str | null, "clocks": {"sm_mhz": int, "memory_mhz": int, "sm_max_mhz": int} | null,
                  "device_memory_gib": float | null, "cpu": str, "cpu_cores": int,
                  "load_average": [1 min, 5 min, 15 min]},     # os.getloadavg() when the run ended
      "software": {"python": str, "torch": str, "cuda": str | null, "cudnn": int | null, "tensorrt": str | null,
                   "onnxruntime": str | null, "openvino": str | null, "nncf": str | null, "opencv": str,
                   "mediapipe": str | null},
      "config": str, "weights": "random" | <checkpoint path>, "frames": int, "warmup": int,
      "alternate": bool,                                 # model-only timed frame by frame in turn (--alternate)
      "results": [{
        "backend": "eager", "precision": "float32",
        "pipeline": "cached" | "uncached-original",    # ours, or the original demo's per-frame work (baseline)
        "model_only": {"fps": float, "ms": Summary},    # keypoints + render of a 256x256 frame, batch 1
        "end_to_end": {"fps": float, "ms": Summary,     # uint8 camera frame in, uint8 output frame out
                       "stages": {"decode" | "framing" | "keypoints" | "render" | "compose" | "sink": Summary}},
                                                        # ours: FrameProcessor's own timings (compose = paste-back);
                                                        # the baseline: decode, framing, model, paste_back, sink
        "peak_memory_mib": float | null,                # this variant's peak from the start of its own timing
                                                        # (with "alternate": of its end-to-end phase, every
                                                        # variant's model loaded), its loaded model included:
                                                        # CUDA's allocator on a GPU, else the whole process's
                                                        # resident set (libraries earlier variants loaded included;
                                                        # Linux; null where it cannot be restarted per variant)
        "speedup": {"model_only": float, "end_to_end": float} | null   # against the baseline, same run
      }]
    }

    Summary = {"p50": ms, "p95": ms, "p99": ms, "mean": ms}

Version 1 reported the process's lifetime peak resident set on the CPU (the largest variant so far, on every
later row); its reports still load for ``--compare``, which reads only FPS.

Times exclude warm-up frames.  FPS = 1000 / mean milliseconds per frame (stages run
one after the other here; the live tool overlaps capture, inference and output in
threads, so it can run faster than the end-to-end figure).
"""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any

import numpy as np

SCHEMA = "fomm-live-fps/2"
COMPARABLE_SCHEMAS = (SCHEMA, "fomm-live-fps/1")  # what --compare reads: their FPS fields mean the same
BASELINE = "uncached-original"
STAGE_ORDER = ("decode", "framing", "keypoints", "render", "model", "compose", "paste_back", "sink")


def cpu_name() -> str:
    """The processor's model name (from /proc/cpuinfo on Linux)."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def summarize(milliseconds: list[float]) -> dict[str, float]:
    """p50, p95, p99 and mean of a list of per-frame times (ms)."""
    values = np.asarray(milliseconds, dtype=np.float64)
    if values.size == 0:
        raise ValueError("no timings to summarize")
    p50, p95, p99 = np.percentile(values, [50, 95, 99])
    return {"p50": float(p50), "p95": float(p95), "p99": float(p99), "mean": float(values.mean())}


def fps_of(summary: dict[str, float]) -> float:
    return 1000.0 / summary["mean"]


def attach_speedups(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Set each non-baseline result's speed-up over the baseline (FPS ratio); the baseline's is None."""
    baselines = [r for r in results if r["pipeline"] == BASELINE]
    if len(baselines) != 1:
        raise ValueError(f"expected exactly one {BASELINE} result, found {len(baselines)}")
    base = baselines[0]
    for result in results:
        if result is base:
            result["speedup"] = None
        else:
            result["speedup"] = {part: result[part]["fps"] / base[part]["fps"] for part in ("model_only", "end_to_end")}
    return results


def _variant(result: dict[str, Any]) -> str:
    return f"{result['backend']} {result['precision']}" + (" (uncached original)" if result["pipeline"] == BASELINE else "")


REFERENCE = ("onnxruntime", "float32")  # what per-frame time ratios are given against


def model_time_ratios(results: list[dict[str, Any]]) -> dict[str, float]:
    """variant -> its model-only mean time over ONNX Runtime float32's in the same run (empty without that one)."""
    reference = [r for r in results if (r["backend"], r["precision"]) == REFERENCE and r["pipeline"] != BASELINE]
    if not reference:
        return {}
    base = reference[0]["model_only"]["ms"]["mean"]
    return {_variant(r): r["model_only"]["ms"]["mean"] / base for r in results}


def markdown_table(report: dict[str, Any]) -> str:
    """The results as a Markdown table, with the machine in a heading line; with an ONNX Runtime float32 result,
    a last column gives each variant's model-only time as a ratio to it.  Speed-up is each variant's FPS over the
    uncached original's, model-only and end to end: two figures, not a ratio of them."""
    machine, software = report["machine"], report["software"]
    device = machine["device_name"] + (f" (sm {machine['compute_capability']})" if machine["compute_capability"] else "")
    stages = [s for s in STAGE_ORDER if any(s in r["end_to_end"]["stages"] for r in report["results"])]
    ratios = model_time_ratios(report["results"])
    memory = "peak device memory MiB" if machine["device"].startswith("cuda") else "peak process RSS MiB"
    lines = [
        f"**{device}**, torch {software['torch']}, {report['config']}, weights {report['weights']}, "
        f"{report['frames']} frames after {report['warmup']} warm-up"
        + (", model-only timed alternating" if report.get("alternate") else ""),
        "",
        "| variant | model-only FPS | end-to-end FPS | speed-up over the uncached original: model-only, end-to-end | "
        + " | ".join(f"{s} p50/p95/p99 ms" for s in stages) + f" | {memory} |"
        + (" model time / onnxruntime float32 |" if ratios else ""),
        "|---|---:|---:|---:|" + "---:|" * len(stages) + "---:|" + ("---:|" if ratios else ""),
    ]
    for result in report["results"]:
        speedup = result["speedup"]
        ratio = f"{speedup['model_only']:.2f}x, {speedup['end_to_end']:.2f}x" if speedup else "baseline"
        peak = "-" if result["peak_memory_mib"] is None else f"{result['peak_memory_mib']:.0f}"
        cells = []
        for stage in stages:
            summary = result["end_to_end"]["stages"].get(stage)
            cells.append(f"{summary['p50']:.1f} / {summary['p95']:.1f} / {summary['p99']:.1f}" if summary else "-")
        lines.append(f"| {_variant(result)} | {result['model_only']['fps']:.2f} | {result['end_to_end']['fps']:.2f} | "
                     f"{ratio} | " + " | ".join(cells) + f" | {peak} |"
                     + (f" {ratios[_variant(result)]:.2f} |" if ratios else ""))
    return "\n".join(lines)


def save_chart(report: dict[str, Any], path: Path) -> None:
    """A PNG: per variant, a bar of the end-to-end p50 stage latencies, stacked in pipeline order."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    results = report["results"]
    labels = [_variant(r) for r in results]
    figure, axes = pyplot.subplots(figsize=(10, 1.2 + 0.7 * len(results)))
    left = np.zeros(len(results))
    colours = pyplot.get_cmap("tab10")
    for index, stage in enumerate(STAGE_ORDER):
        widths = np.array([r["end_to_end"]["stages"].get(stage, {}).get("p50", 0.0) for r in results])
        if widths.any():
            axes.barh(labels, widths, left=left, label=stage, color=colours(index))
            left += widths
    axes.set_xlabel("milliseconds per frame (p50 of each stage)")
    axes.set_title(f"{report['machine']['device_name']}: end-to-end stage latency")
    axes.invert_yaxis()
    axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    pyplot.close(figure)


def load_report(path: Path) -> dict[str, Any]:
    report = json.loads(Path(path).read_text())
    if report.get("schema") not in COMPARABLE_SCHEMAS:
        raise ValueError(f"{path}: expected a {' or '.join(COMPARABLE_SCHEMAS)} report, found schema "
                         f"{report.get('schema')!r}")
    return report


def compare_table(first: dict[str, Any], second: dict[str, Any]) -> str:
    """Two runs (two machines, say) side by side: FPS of each variant in each, and second / first."""
    name_a, name_b = first["machine"]["device_name"], second["machine"]["device_name"]
    lines = [f"A: {name_a} ({first['created']}), B: {name_b} ({second['created']})", "",
             "| variant | A model-only FPS | B model-only FPS | B/A | A end-to-end FPS | B end-to-end FPS | B/A |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    index_b = {_variant(r): r for r in second["results"]}
    variants = [_variant(r) for r in first["results"]] + [v for v in index_b if v not in {_variant(r) for r in first["results"]}]
    index_a = {_variant(r): r for r in first["results"]}
    for variant in variants:
        a, b = index_a.get(variant), index_b.get(variant)
        cells = []
        for part in ("model_only", "end_to_end"):
            fa = a[part]["fps"] if a else None
            fb = b[part]["fps"] if b else None
            ratio = f"{fb / fa:.2f}x" if fa and fb else "-"
            cells += [f"{fa:.2f}" if fa else "-", f"{fb:.2f}" if fb else "-", ratio]
        lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
