"""What the per-frame path was measured to deliver on a CPU: the figures the tool quotes instead of guessing.

The start-up line and ``run_live.py --doctor`` name the end-to-end speed measured for the backend and
precision in use, with the machine it was measured on; ``python run_live.py --benchmark`` measures this one.
Source: ``benchmarks/RESULTS.md``, section "The FPS benchmark on the AMX Xeon: six runs" (the live tool's
FrameProcessor, a 1280x720 camera frame in and out, vox-adv-256; raw report of one run
``benchmarks/results/cpu-intel-xeon-amx-2core.json``).  Each figure is the range over those runs: on a shared cloud
VM the same compiled model ran 2 to 2.5 times faster in the evening than in the afternoon, so one number would
promise too much or too little.  Update both together.
"""

from __future__ import annotations

MEASURED_ON = "a 2-vCPU Intel Xeon with AMX (a cloud VM, six runs)"
END_TO_END_FPS = {  # (backend, precision) -> (slowest, fastest) frames per second, camera frame in to output frame out
    ("openvino", "int8"): (9.3, 14.7),
    ("openvino", "bfloat16"): (6.8, 11.5),
    ("openvino", "float32"): (2.3, 3.2),
    ("onnxruntime", "float32"): (2.2, 3.1),
}


def fps_range(backend: str, precision: str) -> str:
    """The measured frames per second of ``backend`` at ``precision``, e.g. "9.3 to 14.7" (KeyError if unmeasured)."""
    slowest, fastest = END_TO_END_FPS[backend, precision]
    return f"{slowest:g} to {fastest:g}"


def cpu_speed(backend: str, precision: str) -> str:
    """One sentence on how fast ``backend`` at ``precision`` runs on a CPU, from a measurement or saying there is none."""
    if (backend, precision) not in END_TO_END_FPS:
        return (f"{backend} {precision} has not been measured on a CPU; python run_live.py --benchmark measures it "
                "here")
    return (f"measured {fps_range(backend, precision)} frames per second end to end with {backend} {precision} on "
            f"{MEASURED_ON}; python run_live.py --benchmark measures this machine")
