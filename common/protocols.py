"""The reference evaluation protocols by name: how a face crop becomes the network's input.

    protocol = resolve("dve")                      # Protocol(name="dve", resize=100, crop=70, ...)
    protocol = resolve(None, resize=90, crop=64)   # today's flags: a "custom" protocol

Every labelled face is first cropped to its data set's box (DVE's crop for each format, common/data/readers.py),
then, as the reference loaders do, resized whole to `resize` x `resize` once and centre-cropped to `crop` (a
margin of (resize - crop) / 2 pixels a side). Landmarks move with the pixels and are all scored, inside the crop
or not (DVE filters none).

- `dve`: resize 100, crop 15 a side (70 px): DVE's SmallNet configurations, the ones of its `aflw-mtfl` and
  `300w` regression (jamt9000/DVE@2085144, configs/aflw-mtfl-keypoints/celeba-smallnet-64d-dve.json lines 13-23:
  `"imwidth": 100, "crop": 15`; configs/300w-keypoints/celeba-smallnet-64d-dve.json lines 14-21, the same), and
  the frame of its matching errors (test_matching.py lines 39-63: "a 70x70 (post-crop) image").
- `cl`: resize 136, crop 20 a side (96 px): ContrastLandmark's commands (cvl-umass/contrast-landmark@6162dba,
  README.md lines 69 and 100: `--image_size 136 --image_crop 20`), which are DVE's Hourglass configurations
  (configs/aflw-mtfl-keypoints/celeba-hourglass-64d-dve.json lines 17-18) and what the LEAD paper states (Sec. 4,
  "Following DVE, we resize the input image to (136x136) and then take a (96x96) central crop").
The inter-ocular distance is the reference code's in every protocol (DVE model/metric.py lines 5-12: the ground
truth's eye points, points 0 and 1 of 5-point sets, 36 and 45 of the 68, in the cropped frame).
"""
from __future__ import annotations

from dataclasses import dataclass

from .errors import UserError


@dataclass(frozen=True)
class Protocol:
    """A named input preprocessing: resize the face's box to `resize`, then take the central `crop`."""
    name: str
    resize: int
    crop: int
    source: str = ""

    @property
    def margin(self) -> int:
        return (self.resize - self.crop) // 2

    def as_dict(self) -> dict:
        """What results.json and a regressor's config.json record of it."""
        return {"name": self.name, "resize": self.resize, "crop": self.crop, "describe": self.describe()}

    def describe(self) -> str:
        """One line for reports and model cards: name, sizes and whose it is."""
        whose = f", {self.source}" if self.source else ""
        return f"{self.name} (resize {self.resize}, crop {self.margin} a side: {self.crop} px{whose})"


PROTOCOLS = {
    "dve": Protocol("dve", 100, 70, "DVE's SmallNet aflw-mtfl and 300w configs"),
    "cl": Protocol("cl", 136, 96, "ContrastLandmark's commands, DVE's Hourglass configs, the LEAD paper"),
}
DEFAULT = "cl"            # the paper's own statement of its protocol


def resolve(name: str | None, resize: int | None = None, crop: int | None = None) -> Protocol:
    """The protocol of --protocol NAME, or of --resize / --crop (a "custom" one unless they are a preset's sizes; the
    other side defaults to the paper's protocol's); both at once is a one-line error."""
    if name is not None and (resize is not None or crop is not None):
        p = PROTOCOLS[name]
        raise UserError(f"--protocol {name} sets --resize {p.resize} --crop {p.crop}: give the protocol or the sizes, "
                        "not both")
    if resize is None and crop is None:
        return PROTOCOLS[name or DEFAULT]
    base = PROTOCOLS[DEFAULT]
    resize, crop = resize or base.resize, crop or base.crop
    if resize < crop:
        raise UserError(f"--crop {crop} is larger than --resize {resize}")
    return next((p for p in PROTOCOLS.values() if (p.resize, p.crop) == (resize, crop)),
                Protocol("custom", resize, crop))                 # a preset's sizes are that preset
