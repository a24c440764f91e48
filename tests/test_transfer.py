"""The same-image matching protocol end to end on a real photograph that ships with scikit-image."""
import torch
import torch.nn.functional as F
from skimage.data import astronaut

from common.warps import warped_pairs
from common.metrics import match


def patch_features(images: torch.Tensor) -> torch.Tensor:
    """A hand-made dense descriptor: the 7x7 colour patch around each pixel, mean-removed."""
    n, c, h, w = images.shape
    patches = F.unfold(images, 7, padding=3).reshape(n, c * 49, h, w)
    return patches - patches.mean(1, keepdim=True)


def matching_errors(ref, query, points, truth):
    return (match(patch_features(ref), patch_features(query), points, ref.shape[-1])[0] - truth).norm(dim=-1)


def test_warp_matching_on_astronaut_beats_not_moving():
    photo = torch.from_numpy(astronaut()).permute(2, 0, 1)[None].float() / 255
    images = F.interpolate(photo, size=(96, 96), mode="area").repeat(8, 1, 1, 1)
    g = torch.Generator().manual_seed(0)
    points = 24 + 48 * torch.rand(8, 20, 2, generator=g)          # inside, away from the border
    warped, truth, _ = warped_pairs(images, points, g)
    errors = matching_errors(images, warped, points, truth)
    floor = (points - truth).norm(dim=-1)                            # leaving each point where it is
    assert floor.mean() > 2.0                                        # the warps do move things
    assert errors.median() < 1.0 and errors.median() < 0.25 * floor.median(), (errors.median(), floor.median())
    # matching an image with itself is exact
    assert matching_errors(images, images, points.round(), points.round()).max() == 0
