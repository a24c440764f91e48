"""Synthetic faces: determinism, landmark geometry under pose, pixels that agree with points, splits."""
import math

import numpy as np
import pytest
import torch

from common.data import faces, synthetic
from common.data.synthetic import SyntheticSpec

SIZE = 64


def params(n=8, seed=0, variant="aligned", zoom=(1.0, 1.5), size=SIZE, **fixed):
    g = torch.Generator().manual_seed(seed)
    ident = faces.sample_identities(n, g)
    p = faces.sample_images(ident, torch.arange(n), g, variant, zoom, size)
    for k, v in fixed.items():
        p[k] = torch.full_like(p[k], v) if not torch.is_tensor(v) else v.expand_as(p[k]).clone()
    return p


def frontal(n=8, seed=0, size=SIZE):
    """Faces looking straight at the camera, eyes open, centred gaze, no accessories."""
    p = params(n, seed, size=size, yaw=0.0, pitch=0.0, roll=0.0, blink=1.0, glasses=0.0, beard=0.0, stubble=0.0)
    p["gaze"] = torch.zeros_like(p["gaze"])
    return p


def test_same_parameters_give_identical_bytes():
    a = synthetic.render_uint8(params(seed=3), SIZE)
    b = synthetic.render_uint8(params(seed=3), SIZE)
    assert torch.equal(a, b)
    assert not torch.equal(a, synthetic.render_uint8(params(seed=4), SIZE))


@pytest.mark.parametrize("variant", ["aligned", "unaligned"])
def test_an_image_does_not_depend_on_its_batch(variant):
    """Each face rendered alone equals the same face rendered among 31 others (glasses included)."""
    p = params(n=32, seed=1, variant=variant, size=96)
    p["glasses"][:8] = 1.0
    whole = synthetic.render_uint8(p, 96)
    for i in range(32):
        alone = synthetic.render_uint8({k: v[i:i + 1] for k, v in p.items()}, 96)
        assert torch.equal(whole[i:i + 1], alone), i


def test_frontal_face_is_mirror_symmetric_about_the_nose():
    p = frontal()
    lm, vis = faces.project(p, faces.canonical_landmarks(p))
    axis = lm[:, 27:31, 0].mean(1, keepdim=True)           # the nose bridge column
    pairs = [(0, 16), (3, 13), (8, 8), (17, 26), (19, 24), (36, 45), (37, 44), (39, 42), (41, 46),
             (31, 35), (48, 54), (50, 52), (58, 56), (60, 64)]
    left, right = torch.tensor([a for a, _ in pairs]), torch.tensor([b for _, b in pairs])
    assert torch.allclose(lm[:, left, 0] - axis, axis - lm[:, right, 0], atol=1e-3)
    assert torch.allclose(lm[:, left, 1], lm[:, right, 1], atol=1e-3)
    assert vis.all()


def test_300w_order():
    p = frontal()
    lm, _ = faces.project(p, faces.canonical_landmarks(p))
    x, y = lm[..., 0], lm[..., 1]
    assert (x[:, 36] < x[:, 39]).all() and (x[:, 39] < x[:, 42]).all() and (x[:, 42] < x[:, 45]).all()
    assert (y[:, 8] > y[:, 57]).all() and (y[:, 57] > y[:, 33]).all() and (y[:, 33] > y[:, 39]).all()
    assert (y[:, 19] < y[:, 37]).all() and (x[:, 17] < x[:, 21]).all() and (x[:, 48] < x[:, 54]).all()
    assert (y[:, 27] < y[:, 30]).all()                       # bridge down to the tip


def test_landmarks_rotate_with_in_plane_roll():
    """Rolling the camera by theta rotates every point by theta about (tx, ty): computed by hand."""
    p0 = params(seed=2, roll=0.0)
    theta = 0.4
    p1 = {**p0, "roll": torch.full_like(p0["roll"], theta)}
    a, _ = faces.project(p0, faces.canonical_landmarks(p0))
    b, _ = faces.project(p1, faces.canonical_landmarks(p1))
    c = torch.stack([p0["tx"], p0["ty"]], -1)[:, None]
    rot = torch.tensor([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    assert torch.allclose((a - c) @ rot.T + c, b, atol=1e-3)


def test_yaw_hides_the_far_side_of_the_jaw():
    p = frontal()
    p["yaw"] = torch.full_like(p["yaw"], math.radians(60))
    lm, vis = faces.project(p, faces.canonical_landmarks(p))
    frontal_lm, _ = faces.project(frontal(), faces.canonical_landmarks(frontal()))
    far = 16 if (lm[:, 16, 0] - lm[:, 8, 0]).abs().mean() < (lm[:, 0, 0] - lm[:, 8, 0]).abs().mean() else 0
    near = 16 - far
    assert not vis[:, far].any() and vis[:, near].all()
    assert vis[:, 36:48].float().mean() > 0.5
    # foreshortening: the eyes come closer together than in the frontal view
    assert ((lm[:, 45] - lm[:, 36]).norm(dim=-1) < (frontal_lm[:, 45] - frontal_lm[:, 36]).norm(dim=-1)).all()


def _recoloured_difference(p, key, lo, hi):
    """Luminance change when one colour of the faces goes from lo to hi: [N, S, S]."""
    a, b = dict(p), dict(p)
    a[key], b[key] = torch.full_like(p[key], lo), torch.full_like(p[key], hi)
    return (synthetic.render_uint8(a, 128).float() - synthetic.render_uint8(b, 128).float()).abs().mean(1)


def _at(img, pts):
    return img[torch.arange(len(img))[:, None], pts[..., 1].round().long(), pts[..., 0].round().long()]


def test_eyes_and_brows_are_drawn_where_the_points_are():
    """Recolouring the skin changes the cheeks but not the pixels at the 5-point eye centres (they are
    eye, not skin, and not hair); recolouring the hair changes the brow points 19 and 24."""
    p = frontal(n=16, seed=5, size=128)
    lm, _ = faces.project(p, faces.canonical_landmarks(p))
    eyes = faces.mafl_points(lm, torch.ones(lm.shape[:2], dtype=torch.bool))[0][:, :2]
    iod = (eyes[:, 1] - eyes[:, 0]).norm(dim=-1)[:, None, None]
    cheeks = eyes + torch.tensor([0.0, 0.45]) * iod
    skin = _recoloured_difference(p, "skin", 0.2, 0.9)
    hair = _recoloured_difference(p, "hair", 0.0, 1.0)
    assert (_at(skin, cheeks) > 60).all()
    assert (_at(skin, eyes) < 12).all() and (_at(hair, eyes) < 12).all()  # blur may mix in a lid
    assert (_at(hair, lm[:, [19, 24]]) > 40).float().mean() > 0.9


def test_mafl_points_from_68():
    lm = torch.randn(3, 68, 2)
    vis = torch.ones(3, 68, dtype=torch.bool)
    vis[0, 37] = False
    five, vis5 = faces.mafl_points(lm, vis)
    assert torch.allclose(five[:, 0], lm[:, 36:42].mean(1)) and torch.allclose(five[:, 1], lm[:, 42:48].mean(1))
    assert torch.equal(five[:, 2], lm[:, 30]) and torch.equal(five[:, 3], lm[:, 48]) and torch.equal(five[:, 4], lm[:, 54])
    assert vis5[0].tolist() == [False, True, True, True, True] and vis5[1:].all()


def test_unaligned_zoom_out_shrinks_faces():
    iod = {}
    for zoom in ((1.0, 1.0), (2.0, 2.0)):
        p = params(n=64, variant="unaligned", zoom=zoom, yaw=0.0)
        lm, _ = faces.project(p, faces.canonical_landmarks(p))
        iod[zoom] = (lm[:, 45] - lm[:, 36]).norm(dim=-1).mean()
    assert 0.45 < iod[(2.0, 2.0)] / iod[(1.0, 1.0)] < 0.55


def test_splits_have_disjoint_identities_and_five_images_each():
    ids = {s: synthetic.sample_params(SyntheticSpec(split=s, num_images=20, size=SIZE))["identity"] for s in synthetic.SPLITS}
    for s, x in ids.items():
        assert torch.equal(torch.bincount(x - x.min()), torch.full((4,), 5))
        for t, y in ids.items():
            assert s == t or not set(x.tolist()) & set(y.tolist())
    a = synthetic.sample_params(SyntheticSpec(split="train", num_images=20, size=SIZE))
    b = synthetic.sample_params(SyntheticSpec(split="test", num_images=20, size=SIZE))
    assert not torch.allclose(a["head_a"], b["head_a"])


def test_aligned_landmarks_stay_inside_the_image(cache_dir):
    spec = SyntheticSpec(split="train", num_images=64, size=SIZE)
    cache = synthetic.tensors(spec, 68, workers=1)
    lm = np.asarray(cache.landmarks)
    assert lm.min() >= 0 and lm.max() <= SIZE - 1


def test_dataset_rows_and_cache_agree_and_are_reused(cache_dir):
    spec = SyntheticSpec(split="val", num_images=12, size=SIZE)
    ds5 = synthetic.load(spec, 5, workers=1)
    ds68 = synthetic.load(spec, 68, workers=1)
    folder = next(d for d in (cache_dir / "synthetic").iterdir() if d.is_dir())
    stamp = (folder / "tensors" / "images.npy").stat().st_mtime_ns
    assert ds5.column_names == ds68.column_names
    assert set(ds5.column_names) == {"image", "landmarks", "visible", "identity", "box"}
    row = ds5[3]
    assert np.asarray(row["landmarks"]).shape == (5, 2) and len(row["visible"]) == 5
    assert np.asarray(ds68[3]["landmarks"]).shape == (68, 2)
    cache = synthetic.tensors(spec, 5, workers=1)
    assert np.array_equal(np.asarray(row["image"]).transpose(2, 0, 1), cache.images[3])   # PNG is lossless
    assert np.allclose(np.asarray(row["landmarks"]), cache.landmarks[3])
    assert row["identity"] == cache.identity[3]
    assert (folder / "tensors" / "images.npy").stat().st_mtime_ns == stamp      # not regenerated
    # a second process with the same spec reads the same bytes; another variant gets its own folder
    synthetic.load(SyntheticSpec(split="val", num_images=12, size=SIZE, variant="unaligned"), 5, workers=1)
    assert len([d for d in (cache_dir / "synthetic").iterdir() if d.is_dir()]) == 2


def test_generation_in_worker_processes_matches_inline(cache_dir):
    spec = SyntheticSpec(split="test", num_images=40, size=SIZE)
    inline = np.concatenate([imgs for _, imgs, _ in synthetic.iter_rendered(spec, 1, encode=False)])
    pooled = np.concatenate([imgs for _, imgs, _ in synthetic.iter_rendered(spec, 2, encode=False)])
    assert np.array_equal(inline, pooled)


def test_bad_landmark_count_is_refused(cache_dir):
    with pytest.raises(ValueError, match="5 or 68"):
        synthetic.load(SyntheticSpec(split="val", num_images=4, size=SIZE), 7, workers=1)


def test_box3_is_a_replicate_padded_box_blur():
    x = torch.rand(2, 3, 9, 7)
    ref = torch.nn.functional.avg_pool2d(torch.nn.functional.pad(x, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    assert torch.allclose(faces.box3(x), ref, atol=1e-6)
