"""The face crop of a photo as people have them: the largest face that OpenCV's frontal-face detector finds, framed
as the training faces are, so that match.py matches inside faces at the model's input size.

    box = face_box(image)          # PIL RGB image -> square (x0, y0, x1, y1) in its pixels (edges), or None

Why this detector: it is the only face detector whose weights a kept pip package ships (opencv-python-headless 4.x
bundles its Haar cascades; OpenCV 5's wheel no longer does, mediapipe's wheel no longer holds its models, and DNN
detectors such as YuNet, RetinaFace or MTCNN fetch their weights at run time or ship pickles). Its cost, measured on
the 2-core development machine: `import cv2` and loading the cascade ~0.4 s, detection ~60 ms for a 250-400 px
photo (images are shrunk to DETECT_SIDE first, so a large photo costs no more). It finds frontal and mildly turned
faces; a profile or a tiny face may be missed, and then the whole frame is used.

Framing (`python experiments/framing.py`: every 20th MTFL training photo, 500 faces, 14 missed): the crop of a
training face (common.data.readers.mtfl_box, the 300-W protocol's framing predicted from its 5 points) is, in
medians, FACE_SCALE = 1.67 times the detector's square (quartiles 1.57-1.78) and FACE_SHIFT = 0.12 of its side lower.
"""
from __future__ import annotations

import numpy as np
from PIL import Image

FACE_SCALE = 1.67
FACE_SHIFT = 0.12
DETECT_SIDE = 640              # the longer side a photo is shrunk to before detection
_DETECTOR = None


def detector():
    """OpenCV's bundled frontal-face Haar cascade, loaded once."""
    global _DETECTOR
    if _DETECTOR is None:
        import cv2
        _DETECTOR = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")
        if _DETECTOR.empty():
            raise RuntimeError("OpenCV's haarcascade_frontalface_default.xml did not load")
    return _DETECTOR


def largest_face(image: Image.Image) -> tuple[float, float, float] | None:
    """The largest detected face as (centre x, centre y, side) in the image's pixels (centres), or None."""
    grey = image.convert("L")
    shrink = min(1.0, DETECT_SIDE / max(grey.size))
    if shrink < 1:
        grey = grey.resize((max(1, round(grey.width * shrink)), max(1, round(grey.height * shrink))), Image.BILINEAR)
    faces = detector().detectMultiScale(np.asarray(grey), scaleFactor=1.1, minNeighbors=5, minSize=(24, 24))
    if len(faces) == 0:
        return None
    x, y, w, h = max(faces, key=lambda f: int(f[2]) * int(f[3]))
    return (x + w / 2) / shrink - 0.5, (y + h / 2) / shrink - 0.5, w / shrink


def face_box(image: Image.Image) -> list[float] | None:
    """The square around the largest face, framed as the training crops (FACE_SCALE, FACE_SHIFT), as a box
    (x0, y0, x1, y1) of pixel edges in the image's coordinates; it may leave the image (zero-padded). None when no
    face is found."""
    face = largest_face(image)
    if face is None:
        return None
    cx, cy, side = face
    half = FACE_SCALE * side / 2
    cy += FACE_SHIFT * side
    return [float(v) for v in (cx - half, cy - half, cx + half, cy + half)]
