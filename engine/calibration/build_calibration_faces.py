"""Rebuild faces.npz, the int8 calibration faces, from the two photographs (a maintainer's tool, not run by the app).

    pip download scikit-image==0.26.0 matplotlib==3.11.2 --no-deps --only-binary=:all: \
        --python-version 3.11 --platform manylinux_2_28_x86_64 -d /tmp/faces
    unzip -j /tmp/faces/scikit_image-0.26.0-*.whl skimage/data/astronaut.png -d /tmp/faces
    unzip -j /tmp/faces/matplotlib-3.11.2-*.whl matplotlib/mpl-data/sample_data/grace_hopper.jpg -d /tmp/faces
    python engine/calibration/build_calibration_faces.py /tmp/faces/astronaut.png /tmp/faces/grace_hopper.jpg

Each photograph (checked against its known sha256) is decoded by Pillow and framed as the live tool frames an
avatar (:func:`live.framing.frame_avatar`: mediapipe's full-range face detector, a square twice the face box,
raised by a tenth of it, kept inside the photo, resized to 256x256 with OpenCV's INTER_AREA).  faces.npz holds one
256x256x3 uint8 RGB array per face, under the names below, in that order.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
SIZE = 256
PHOTOGRAPHS = {  # name in faces.npz: (file name, sha256 of the file)
    "astronaut": ("astronaut.png", "88431cd9653ccd539741b555fb0a46b61558b301d4110412b5bc28b5e3ea6cb5"),
    "grace_hopper": ("grace_hopper.jpg", "a8ca6d734765703b09728ab47fe59f473d93ae3967fc24c7c0288c3c7adb7130"),
}


def read_photograph(path: Path, expected_sha256: str) -> np.ndarray:
    """The photograph at ``path`` as HxWx3 uint8 RGB, after checking its sha256."""
    found = hashlib.sha256(path.read_bytes()).hexdigest()
    if found != expected_sha256:
        raise SystemExit(f"{path} has sha256 {found}, expected {expected_sha256}: not the photograph this set is made of")
    return np.asarray(Image.open(path).convert("RGB"))


def main(paths: list[str]) -> None:
    if len(paths) != len(PHOTOGRAPHS):
        raise SystemExit(f"expected {len(PHOTOGRAPHS)} photographs ({', '.join(f for f, _ in PHOTOGRAPHS.values())}), "
                         f"got {len(paths)}")
    sys.path.insert(0, str(HERE.parents[1]))
    from live.framing import FaceDetector, frame_avatar

    detector = FaceDetector(long_range=True)
    faces = {}
    for (name, (file_name, sha256)), path in zip(PHOTOGRAPHS.items(), map(Path, paths)):
        if path.name != file_name:
            raise SystemExit(f"expected {file_name} in position {len(faces) + 1}, got {path}")
        framed = frame_avatar(read_photograph(path, sha256), detector, SIZE)
        if not framed.face_found:
            raise SystemExit(f"no face found in {path}")
        print(f"{name}: crop centre ({framed.square.cx:.1f}, {framed.square.cy:.1f}), side {framed.square.size:.1f}")
        faces[name] = framed.crop
    detector.close()
    np.savez_compressed(HERE / "faces.npz", **faces)
    print(f"wrote {HERE / 'faces.npz'}: sha256 {hashlib.sha256((HERE / 'faces.npz').read_bytes()).hexdigest()}")


if __name__ == "__main__":
    main(sys.argv[1:])
