"""Part discovery (LEAD Fig. 5-6, supplement Fig. 14): do a model's per-position features group into parts
that are the same parts on every face?

    python experiments/parts.py --model runs/demo/byol/final random-resnet18 --k 8 --output_dir runs/parts

For each model, on --images labelled images of the validation split:
- NMF (deep feature factorisation, Collins et al. 2018) of the non-negative hypercolumn into k parts, and
  k-means of the L2-normalised features into k clusters; each position takes its strongest part / cluster;
- part consistency: for each landmark, the share of images whose part at the landmark is that landmark's most
  frequent part (1: the part is the same on every face; a network that does not know parts scores lower);
- landmark retrieval across identities: each landmark's feature, labelled by its nearest neighbour (cosine)
  among the landmark features of faces of other identities; the share labelled right (chance: 1 / K);
- pictures: parts_<model>_<method>.png (positions coloured by part, landmarks drawn) and tsne_<model>.png (t-SNE
  of the landmark features, coloured by landmark).
Writes OUTPUT/parts.json.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common.cli import HelpWithDefaults, at_least, data_args, from_flags, run_cli  # noqa: E402
from common.data import DataSpec, load_tensors  # noqa: E402
from common.errors import UserError
from common.features import check_source, fit_nmf, load_source, nmf_project  # noqa: E402
from common.probe import resized  # noqa: E402
from common.training import prepare_output  # noqa: E402
from common.viz import palette  # noqa: E402

logger = logging.getLogger("lead")
METHODS = ("nmf", "kmeans")


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser("Part discovery", parents=[data_args()], formatter_class=HelpWithDefaults)
    parser.add_argument("--model", nargs="+", required=True,
                        help="model folders or Hub ids (stage 1: its hypercolumn; stage 2: its features), "
                             "random-resnet18 for an untrained reference")
    parser.add_argument("--k", type=at_least(2), default=8, help="parts / clusters")
    parser.add_argument("--method", nargs="+", default=list(METHODS), choices=METHODS,
                        help="nmf needs non-negative features (a hypercolumn); kmeans takes any")
    parser.add_argument("--images", type=at_least(2), default=100, help="validation images used")
    parser.add_argument("--size", type=at_least(16), default=64, help="side the images are given at")
    parser.add_argument("--fit_rows", type=at_least(1), default=10000, help="positions NMF / k-means are fitted on")
    parser.add_argument("--show", type=at_least(1), default=8, help="images in each picture")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output_dir", default="runs/parts")
    parser.add_argument("--overwrite", action="store_true", help="replace a used --output_dir")
    return parser


@torch.no_grad()
def features_of(source, images: torch.Tensor, batch: int = 50) -> torch.Tensor:
    """Images [N, 3, S, S] in [0, 1] -> features [N, C, h, w] (fp32)."""
    return torch.cat([source(images[s:s + batch]).float() for s in range(0, len(images), batch)])


def discover(feats: torch.Tensor, k: int, method: str, fit_rows: int, seed: int) -> tuple[torch.Tensor, dict]:
    """Each position's part [N, h, w] and the fit's figures (NMF: its relative reconstruction error)."""
    n, _, h, w = feats.shape
    rows = rearrange(feats, "n c h w -> (n h w) c")
    fit = rows[torch.randperm(len(rows), generator=torch.Generator().manual_seed(seed))[:fit_rows]]
    if method == "nmf":
        if (rows < 0).any():
            raise UserError("nmf factorises non-negative features (a stage-1 hypercolumn): use --method kmeans")
        basis = fit_nmf(fit, k, seed=seed)
        codes = nmf_project(rows, basis)
        info = {"nmf_relative_error": ((rows - codes @ basis).norm() / rows.norm()).item()}
        labels = codes.argmax(1)
    else:
        from sklearn.cluster import KMeans
        km = KMeans(k, n_init=4, random_state=seed).fit(F.normalize(fit, dim=1).numpy())
        labels = torch.from_numpy(km.predict(F.normalize(rows, dim=1).numpy())).long()
        info = {}
    return labels.view(n, h, w), info


def cells_of(landmarks: torch.Tensor, size: int, h: int) -> torch.Tensor:
    """The map cell [N, K, 2] (x, y) holding each landmark (pixel centres at the image size)."""
    return ((landmarks + 0.5) * h / size).floor().long().clamp(0, h - 1)


def part_consistency(labels: torch.Tensor, landmarks: torch.Tensor, size: int) -> list[float]:
    """Per landmark: the share of images whose part at the landmark is the landmark's most frequent part."""
    cells = cells_of(landmarks, size, labels.shape[-1])
    at = labels[torch.arange(len(labels))[:, None], cells[..., 1], cells[..., 0]]      # [N, K]
    return [torch.bincount(at[:, j]).max().item() / len(at) for j in range(at.shape[1])]


def landmark_features(feats: torch.Tensor, landmarks: torch.Tensor, size: int) -> torch.Tensor:
    """Features sampled bilinearly at the landmarks [N, K, C], L2-normalised."""
    grid = ((landmarks + 0.5) / size * 2 - 1)[:, :, None]                              # [N, K, 1, 2]
    out = F.grid_sample(feats, grid, mode="bilinear", align_corners=False)[..., 0]     # [N, C, K]
    return F.normalize(rearrange(out, "n c k -> n k c"), dim=-1)


def retrieval_accuracy(points: torch.Tensor, identity: np.ndarray) -> float:
    """Each landmark feature [N, K, C] labelled by its nearest neighbour among other identities' landmark
    features; the share labelled with its own landmark."""
    n, k, _ = points.shape
    flat = rearrange(points, "n k c -> (n k) c")
    ident = torch.as_tensor(identity).repeat_interleave(k)
    sim = flat @ flat.T
    sim[ident[:, None] == ident[None, :]] = -2                                         # other faces only
    return (sim.argmax(1) % k == torch.arange(n * k) % k).float().mean().item()


def parts_picture(images: torch.Tensor, labels: torch.Tensor, landmarks: torch.Tensor, k: int, path: Path) -> None:
    """Each image above its positions coloured by part (nearest-cell upsampling), with its landmarks."""
    from PIL import Image
    from common.viz import draw_points
    size = images.shape[-1]
    colours = torch.tensor(palette(k), dtype=torch.float32) / 255
    up = F.interpolate(labels[:, None].float(), size=(size, size), mode="nearest")[:, 0].long()
    overlay = 0.45 * images + 0.55 * rearrange(colours[up], "n h w c -> n c h w")
    tiles = []
    for img in (images, overlay):
        row = (rearrange(img, "n c h w -> h (n w) c").clamp(0, 1) * 255).byte().numpy()
        tiles.append(np.asarray(Image.fromarray(row).resize((row.shape[1] * 2, row.shape[0] * 2), Image.NEAREST)))
    picture = Image.fromarray(np.concatenate(tiles))
    for i, points in enumerate(landmarks):              # landmark j in the colour of tsne_picture's landmark j
        picture = draw_points(picture, (points + torch.tensor([i * size, 0.0]) + 0.5) * 2 - 0.5, radius=2.5)
    picture.save(path)


def tsne_picture(points: torch.Tensor, path: Path, title: str, seed: int) -> None:
    """t-SNE of the landmark features [N, K, C], coloured by landmark."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.manifold import TSNE
    n, k, _ = points.shape
    xy = TSNE(2, init="pca", perplexity=min(30, n * k - 1), random_state=seed).fit_transform(
        rearrange(points, "n k c -> (n k) c").numpy())
    fig, ax = plt.subplots(figsize=(4, 4))
    for j, col in enumerate(palette(k)):
        ax.scatter(xy[j::k, 0], xy[j::k, 1], s=6, color=np.array(col) / 255, label=f"landmark {j}")
    ax.set(title=title, xticks=[], yticks=[])
    ax.legend(fontsize=6, markerscale=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(args) -> dict:
    out = Path(args.output_dir)
    for spec in args.model:
        check_source(spec)
    prepare_output(out, False, args.overwrite, True)
    cache = load_tensors(from_flags(DataSpec, vars(args)), "val")
    idx = np.sort(np.random.default_rng(args.seed).choice(len(cache), min(args.images, len(cache)), replace=False))
    images, landmarks = resized(cache, idx, args.size)
    identity = np.asarray(cache.identity)[idx]
    results = {}
    for spec in args.model:
        name = Path(spec).parent.name + "-" + Path(spec).name if Path(spec).exists() else spec
        feats = features_of(load_source(spec), images)
        points = landmark_features(feats, landmarks, args.size)
        res = {"retrieval_accuracy": retrieval_accuracy(points, identity), "chance": 1 / landmarks.shape[1]}
        for method in args.method:
            if method == "nmf" and (feats < 0).any():
                logger.info("%s: features take negative values, no NMF", spec)
                continue
            labels, info = discover(feats, args.k, method, args.fit_rows, args.seed)
            per_landmark = part_consistency(labels, landmarks, args.size)
            res[method] = {"consistency": float(np.mean(per_landmark)), "per_landmark": per_landmark, **info}
            parts_picture(images[:args.show], labels[:args.show], landmarks[:args.show], args.k,
                          out / f"parts_{name}_{method}.png")
        tsne_picture(points, out / f"tsne_{name}.png", name, args.seed)
        results[spec] = res
        logger.info("%s: %s", spec, json.dumps(res))
    (out / "parts.json").write_text(json.dumps({"args": vars(args), "results": results}, indent=1))
    return results


if __name__ == "__main__":
    run_cli(main, get_args_parser())
