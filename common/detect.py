"""Faces in photos as people have them: every face a detector finds, framed as the training faces are, for
regress.py --predict (every face) and match.py (the largest).

    boxes = raw_faces(image)       # PIL RGB image -> [(x0, y0, x1, y1, score)] in its pixels (edges)
    box = frame(boxes[0])          # the square crop the regressors and matchers were trained on
    box = face_box(image)          # the largest face's crop, or None

Which detector (`python experiments/detectors.py`, experiments/detectors.md): four candidates whose weights a kept
pip package ships, none fetched at run time, on AFW, HELEN's training faces and the AFLW test faces passed whole.
dlib's HOG + linear SVM frontal detector (DEFAULT; the dlib-bin wheel, 4 MB, its model compiled in) finds the most
faces (91 / 95 / 90 %, against 85 / 92 / 73 % for OpenCV's Haar cascade and 90 / 94 / 74 % with its profile
cascade added, at 3-4 times the cost), and frames them the most consistently. OpenCV's
cascades stay as --detector choices (opencv-python-headless 4.x bundles them; OpenCV 5's wheel no longer does,
mediapipe's wheel holds no models, and YuNet, RetinaFace or MTCNN fetch their weights or ship pickles).

Framing (FRAMING, from training labels only: every 20th MTFL training photo): the crop of a training face
(common.data.readers.mtfl_box, the 300-W protocol's framing predicted from its 5 points) is, in medians, `scale`
times the detector's largest box and `shift` of its side lower.
"""
from __future__ import annotations

import numpy as np
from PIL import Image

DEFAULT = "hog"
_LOADED: dict = {}


def _cascade(name: str):
    import cv2
    if name not in _LOADED:
        _LOADED[name] = cv2.CascadeClassifier(cv2.data.haarcascades + f"haarcascade_{name}.xml")
        if _LOADED[name].empty():
            raise RuntimeError(f"OpenCV's haarcascade_{name}.xml did not load")
    return _LOADED[name]


def _haar(grey: np.ndarray, cascade: str = "frontalface_default") -> list[tuple]:
    rects, _, weights = _cascade(cascade).detectMultiScale3(grey, scaleFactor=1.1, minNeighbors=5, minSize=(24, 24),
                                                            outputRejectLevels=True)
    return [(x, y, x + w, y + h, float(s)) for (x, y, w, h), s in zip(rects, np.ravel(weights))]


def _haar_profile(grey: np.ndarray) -> list[tuple]:
    """The frontal cascade, and the profile cascade (trained on faces turned one way) on the image and its mirror;
    profile boxes that overlap a frontal one are dropped."""
    width = grey.shape[1]
    boxes = _haar(grey)
    side = _haar(grey, "profileface") + [(width - x1, y0, width - x0, y1, s)
                                         for x0, y0, x1, y1, s in _haar(np.ascontiguousarray(grey[:, ::-1]),
                                                                        "profileface")]
    for b in sorted(side, key=lambda b: -b[4]):
        if all(overlap(b, k) < 0.3 for k in boxes):
            boxes.append(b)
    return boxes


def _hog(grey: np.ndarray) -> list[tuple]:
    import dlib
    if "hog" not in _LOADED:
        _LOADED["hog"] = dlib.get_frontal_face_detector()
    rects, scores, _ = _LOADED["hog"].run(grey, 0, 0.0)
    return [(r.left(), r.top(), r.right() + 1, r.bottom() + 1, float(s)) for r, s in zip(rects, scores)]


def overlap(a, b) -> float:
    """Intersection over union of two boxes (x0, y0, x1, y1, ...)."""
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    return w * h / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h)


DETECTORS = {"haar": _haar, "haar_alt2": lambda g: _haar(g, "frontalface_alt2"), "haar+profile": _haar_profile,
             "hog": _hog}
# (enlarge to, shrink to, most enlargement): a photo whose longer side is under the first is enlarged towards it (at
# most so much), one over the second is shrunk to it, before detection. The cascades find faces from 24 px: at
# 640 px, faces of 4 % of the photo's side. HOG's window is 80 px: a large photo at 2048 px, faces of 4 % too (~0.2 s
# a photo); a small one enlarged to 640 (faces from 12 % of its side, 40 px at 2x) and one in between as it is, as
# enlarging 480 px photos 2x costs 4 times the time (80 ms) and found no more of AFW's faces
SCALING = {"haar": (640, 640, 1.0), "haar_alt2": (640, 640, 1.0), "haar+profile": (640, 640, 1.0),
           "hog": (640, 2048, 2.0)}
# (scale, shift) per detector, measured by experiments/detectors.py (haar+profile: the frontal cascade's)
FRAMING = {"haar": (1.67, 0.12), "haar_alt2": (1.70, 0.12), "haar+profile": (1.67, 0.12), "hog": (1.88, 0.05)}


def raw_faces(image: Image.Image, name: str = DEFAULT) -> list[tuple[float, float, float, float, float]]:
    """Every face the detector `name` finds, as (x0, y0, x1, y1, score): its box (pixel edges, in the image's
    pixel-centre coordinates) and the detector's confidence (comparable within one detector only)."""
    grey = image.convert("L")
    up_to, down_to, most = SCALING[name]
    longer = max(grey.size)
    zoom = min(most, up_to / longer) if longer < up_to else min(1.0, down_to / longer)
    if zoom != 1:
        grey = grey.resize((max(1, round(grey.width * zoom)), max(1, round(grey.height * zoom))), Image.BILINEAR)
    zx, zy = grey.width / image.width, grey.height / image.height          # each axis's own, after rounding
    return [(x0 / zx - 0.5, y0 / zy - 0.5, x1 / zx - 0.5, y1 / zy - 0.5, s)
            for x0, y0, x1, y1, s in DETECTORS[name](np.asarray(grey))]


def frame(box, detector: str = DEFAULT) -> list[float]:
    """A detector's box -> the square the training faces are cropped to (FRAMING: `scale` times its width, its
    centre `shift` widths lower)."""
    scale, shift = FRAMING[detector]
    x0, y0, x1, y1 = box[:4]
    side = x1 - x0
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2 + shift * side
    half = scale * side / 2
    return [float(v) for v in (cx - half, cy - half, cx + half, cy + half)]


def face_box(image: Image.Image, detector: str = DEFAULT) -> list[float] | None:
    """The square around the largest face, framed as the training crops, as a box (x0, y0, x1, y1) of pixel edges in
    the image's coordinates; it may leave the image (zero-padded). None when no face is found."""
    boxes = raw_faces(image, detector)
    return frame(max(boxes, key=lambda b: b[2] - b[0]), detector) if boxes else None
