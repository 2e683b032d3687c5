"""Engine of the puppeteering tool: our First Order Motion Model and the animator the live loop drives.

    from engine import load_model, Animator
    model = load_model("vox-adv-256", device="cpu")  # weights: python run_live.py --download-weights
    anim = Animator(model, source_image, relative=True, adapt_scale=True)
    anim.calibrate(driving_frame)   # set the reference pose
    frame = anim(driving_frame)     # one animated frame
"""

from .animator import Animator
from .config import ModelConfig
from .errors import CheckpointError, ConfigError, EngineError, ImageError, MotionError
from .model import RELEASED_WEIGHTS, FirstOrderModel, load_model
from .motion import Keypoints

__all__ = [
    "Animator",
    "CheckpointError",
    "ConfigError",
    "EngineError",
    "FirstOrderModel",
    "ImageError",
    "Keypoints",
    "ModelConfig",
    "MotionError",
    "RELEASED_WEIGHTS",
    "load_model",
]
