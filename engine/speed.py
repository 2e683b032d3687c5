"""What the per-frame path was measured to deliver on a CPU: the figures the tool quotes instead of guessing.

The start-up line and ``run_live.py --doctor`` name the end-to-end speed measured for the backend and
precision in use, with the machine it was measured on; ``python run_live.py --benchmark`` measures this one.
Source: ``benchmarks/RESULTS.md``, section "The FPS benchmark on the AMX Xeon, idle" (the live tool's FrameProcessor, a
1280x720 camera frame in and out, vox-adv-256; raw report ``benchmarks/results/cpu-intel-xeon-amx-2core.json``).
Update both together.
"""

from __future__ import annotations

MEASURED_ON = "a 2-vCPU Intel Xeon with AMX (a cloud VM)"
END_TO_END_FPS = {  # (backend, precision) -> frames per second, camera frame in to output frame out
    ("openvino", "int8"): 9.3,
    ("openvino", "bfloat16"): 6.8,
    ("openvino", "float32"): 2.3,
    ("onnxruntime", "float32"): 2.3,
}


def cpu_speed(backend: str, precision: str) -> str:
    """One sentence on how fast ``backend`` at ``precision`` runs on a CPU, from a measurement or saying there is none."""
    fps = END_TO_END_FPS.get((backend, precision))
    if fps is None:
        return (f"{backend} {precision} has not been measured on a CPU; python run_live.py --benchmark measures it "
                "here")
    return (f"measured {fps:g} frames per second end to end with {backend} {precision} on {MEASURED_ON}; "
            "python run_live.py --benchmark measures this machine")
