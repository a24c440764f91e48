"""Networks shared by the stages: the ResNet encoder with hypercolumns, and BYOL's MLP heads.

Models handed between stages inherit `PyTorchModelHubMixin` (through `StageModel`): their constructor arguments
are their config, so `save_pretrained` writes config.json + model.safetensors and `from_pretrained` takes a
folder or a Hub id; the next stage never needs the previous one's flags. config.json also says what the folder
holds, in its "stage" field (STAGES):

    "encoder"     stage 1 (byol_pretrain.py): ResNetEncoder, whose hypercolumn is the stage-1 feature
    "extractor"   stage 2 (dense_distill.py): DenseExtractor, the compact dense features
    "regressor"   stage 3 (regress.py): LandmarkRegressor, on the frozen features of a stage-1 or 2 model

Folders written before the field existed are read by their keys (stage_of). `from_pretrained` of one class on
another stage's folder is a one-line UserError.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange
from huggingface_hub import PyTorchModelHubMixin

from .errors import UserError
from .resnet import ResNet

ARCHS = ("resnet18", "resnet34", "resnet50")
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
STAGES = {"encoder": "stage 1's ResNetEncoder", "extractor": "stage 2's DenseExtractor",
          "regressor": "stage 3's LandmarkRegressor"}
# how a config.json without "stage" (written before it existed) is read: the first of these keys it has
OLD_STAGE_KEYS = (("num_points", "regressor"), ("feature_dim", "extractor"), ("arch", "encoder"))


def stage_of(config: dict) -> str | None:
    """What a final/ folder holds, from its config.json: its "stage", else (an older folder) by OLD_STAGE_KEYS;
    None when neither says."""
    if "stage" in config:
        return config["stage"]
    return next((stage for key, stage in OLD_STAGE_KEYS if key in config), None)


class StageModel(PyTorchModelHubMixin):
    """A model handed between stages: save_pretrained writes its `stage` into config.json, and from_pretrained
    refuses another stage's folder (its weights would otherwise load in part, silently: the mixin's strict=False)."""

    stage: str

    def save_pretrained(self, save_directory, *, config: dict | None = None, **kwargs):
        return super().save_pretrained(save_directory, config={**(config or self._hub_mixin_config),
                                                               "stage": self.stage}, **kwargs)

    @classmethod
    def _from_pretrained(cls, *, config: dict | None = None, **kwargs):
        # `config` in this signature makes the mixin pass config.json here, before any weight is read
        found = stage_of(config or {})
        if found is not None and found != cls.stage:
            raise UserError(f"{kwargs['model_id']} holds {STAGES.get(found, f'a {found!r} model')}, not "
                            f"{STAGES[cls.stage]}")
        return super()._from_pretrained(**kwargs)


class ResNetEncoder(nn.Module, StageModel):
    """A torchvision ResNet, randomly initialised, that takes images in [0, 1] (it normalises them).

    forward(x) -> the globally pooled layer-4 vector [B, width] (BYOL's representation);
    hypercolumn(x) -> layers 1-4 upsampled bilinearly to 1/4 of the input and concatenated
    [B, 3840, H/4, W/4] for resnet50 (960 for resnet18/34), each layer L2-normalised over its
    channels by default (as ContrastLandmark does for matching).
    """

    stage = "encoder"

    def __init__(self, arch: str = "resnet50", normalize_layers: bool = True,
                 mean: tuple = IMAGENET_MEAN, std: tuple = IMAGENET_STD, last_stride: int = 2, input_size: int = 96):
        super().__init__()
        self.input_size = input_size           # the side it was trained at (in config.json: match.py's default)
        if arch not in ARCHS:
            raise ValueError(f"arch must be one of {ARCHS}, got {arch!r}")
        if last_stride not in (1, 2):
            raise ValueError(f"last_stride must be 1 or 2, got {last_stride}")
        net = ResNet(arch)                     # torchvision's, without importing torchvision (slow)
        if last_stride == 1:       # layer 4 at stride 16: twice its resolution (small inputs), 4x its cost
            first = net.layer4[0]
            (first.conv2 if hasattr(first, "bn3") else first.conv1).stride = (1, 1)
            first.downsample[0].stride = (1, 1)
        self.arch, self.normalize_layers, self.last_stride = arch, normalize_layers, last_stride
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        self.width = net.fc.in_features
        self.channels = [self._out_channels(layer) for layer in (net.layer1, net.layer2, net.layer3, net.layer4)]
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    @staticmethod
    def _out_channels(layer: nn.Sequential) -> int:
        block = layer[-1]
        return (block.bn3 if hasattr(block, "bn3") else block.bn2).num_features

    @property
    def hypercolumn_dim(self) -> int:
        return sum(self.channels)

    def layers(self, x: torch.Tensor, start: int = 0) -> list[torch.Tensor]:
        """Layer 1-4 maps at strides 4, 8, 16, 32 of images x in [0, 1]. With start = k in 1-4, x is layer k's
        map, computed already, and the maps of layers k+1 to 4 are returned (none for k = 4)."""
        if start == 0:
            x = self.stem((x - self.mean) / self.std)
        out = []
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4)[start:]:
            x = layer(x)
            out.append(x)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rearrange(F.adaptive_avg_pool2d(self.layers(x)[-1], 1), "b c 1 1 -> b c")

    def hypercolumn(self, x: torch.Tensor) -> torch.Tensor:
        return self.hypercolumn_of(self.layers(x))

    def hypercolumn_of(self, maps: list[torch.Tensor]) -> torch.Tensor:
        """The hypercolumn from layer maps already computed (stage 2 shares them with the student)."""
        size = maps[0].shape[-2:]
        ups = [m if m.shape[-2:] == size else F.interpolate(m, size=size, mode="bilinear", align_corners=False)
               for m in maps]
        if self.normalize_layers:
            ups = [F.normalize(u, dim=1) for u in ups]
        return torch.cat(ups, 1)


def dense_grid(maps: list[torch.Tensor], grid: int) -> torch.Tensor:
    """Layer maps resized to grid x grid (area-pooled down, bilinear up), each L2-normalised over its
    channels, concatenated: [B, sum C, grid, grid]; the dense features of pixel-level objectives."""
    out = []
    for m in maps:
        if m.shape[-1] >= grid:
            m = F.adaptive_avg_pool2d(m, grid)
        else:
            m = F.interpolate(m, size=(grid, grid), mode="bilinear", align_corners=False)
        out.append(F.normalize(m, dim=1))
    return torch.cat(out, 1)


class ConvHead(nn.Module):
    """MLPHead applied at every position of a map: 1x1 conv -> BatchNorm -> ReLU -> 1x1 conv (PixPro)."""

    def __init__(self, dim_in: int, hidden: int = 4096, dim_out: int = 256):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(dim_in, hidden, 1), nn.BatchNorm2d(hidden), nn.ReLU(inplace=True),
                                 nn.Conv2d(hidden, dim_out, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class MLPHead(nn.Module):
    """BYOL's projector / predictor: Linear -> BatchNorm -> ReLU -> Linear."""

    def __init__(self, dim_in: int, hidden: int = 4096, dim_out: int = 256):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim_in, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
                                 nn.Linear(hidden, dim_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class FPNDecoder(nn.Module):
    """Feature pyramid (Lin et al. 2017) with the semantic branch of Panoptic FPN (Kirillov et al.
    2019), the 'upsampling blocks' LEAD's decoder uses: lateral 1x1 convs and a top-down sum give
    P2-P5 (strides 4-32); each goes through conv3x3-GroupNorm-ReLU blocks with 2x bilinear
    upsampling until stride 4; the four maps are summed and a 1x1 conv gives `dim` channels."""

    def __init__(self, channels: list[int], width: int = 128, dim: int = 64):
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv2d(c, width, 1) for c in channels)
        self.smooth = nn.ModuleList(nn.Conv2d(width, width, 3, padding=1) for _ in channels)
        self.branches = nn.ModuleList(
            nn.Sequential(*[self._block(width) for _ in range(max(level, 1))]) for level in range(len(channels)))
        self.head = nn.Conv2d(width, dim, 1)

    @staticmethod
    def _block(width: int) -> nn.Sequential:
        # up to 32 groups as Panoptic FPN, but at least 2 channels a group: at stride 32 a small image's map is
        # 1x1, and a group of one value has no variance (group_norm raises)
        groups = math.gcd(32, width)
        groups = groups if width > groups else groups // 2
        return nn.Sequential(nn.Conv2d(width, width, 3, padding=1, bias=False),
                             nn.GroupNorm(groups, width), nn.ReLU(inplace=True))

    def forward(self, maps: list[torch.Tensor]) -> torch.Tensor:
        lat = [conv(m) for conv, m in zip(self.lateral, maps)]
        for i in range(len(lat) - 2, -1, -1):                                           # top-down pathway
            lat[i] = lat[i] + F.interpolate(lat[i + 1], size=lat[i].shape[-2:], mode="nearest")
        sizes = [p.shape[-2:] for p in lat]
        out = 0
        for level, (p, smooth, branch) in enumerate(zip(lat, self.smooth, self.branches)):
            x = smooth(p)
            for k, block in enumerate(branch):
                x = block(x)
                if level:                        # up one level per block: the sizes need not be powers of 2
                    x = F.interpolate(x, size=sizes[level - 1 - k], mode="bilinear", align_corners=False)
            out = out + x
        return self.head(out)


class DenseExtractor(nn.Module, StageModel):
    """LEAD's compact dense extractor Φ_D (stage 2): a ResNet encoder (initialised from stage 1) and
    an FPN decoder; forward(x) -> [B, feature_dim, H/4, W/4] for images x in [0, 1]. decoder="linear" is instead
    ContrastLandmark's projector: a 1x1 convolution of the hypercolumn, blind to where a position is. `spatial_softmax`
    m > 0 turns each channel into a heatmap, softmax over the positions of m x the decoder's output (ContrastLandmark's
    features, its softargmax_mul 7)."""

    stage = "extractor"

    def __init__(self, arch: str = "resnet50", feature_dim: int = 64, fpn_width: int = 128,
                 mean: tuple = IMAGENET_MEAN, std: tuple = IMAGENET_STD, last_stride: int = 2, input_size: int = 96,
                 spatial_softmax: float = 0.0, decoder: str = "fpn"):
        super().__init__()
        if decoder not in ("fpn", "linear"):
            raise ValueError(f"decoder must be fpn or linear, not {decoder!r}")
        self.arch, self.feature_dim, self.input_size = arch, feature_dim, input_size
        self.spatial_softmax, self.decoder_kind = spatial_softmax, decoder
        self.encoder = ResNetEncoder(arch, mean=mean, std=std, last_stride=last_stride)
        self.decoder = FPNDecoder(self.encoder.channels, fpn_width, feature_dim) if decoder == "fpn" else \
            nn.Conv2d(self.encoder.hypercolumn_dim, feature_dim, 1)

    def decode(self, maps: list[torch.Tensor]) -> torch.Tensor:
        """The encoder's layer maps -> the dense features."""
        x = self.decoder(maps if self.decoder_kind == "fpn" else self.encoder.hypercolumn_of(maps))
        if self.spatial_softmax:
            h = x.shape[-2]
            x = rearrange(F.softmax(rearrange(x.float() * self.spatial_softmax, "b c h w -> b c (h w)"), dim=-1),
                          "b c (h w) -> b c h w", h=h).to(x.dtype)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encoder.layers(x))


def soft_argmax(logits: torch.Tensor) -> torch.Tensor:
    """Expected position under the spatial softmax of each map [B, n, h, w] -> [B, n, 2] (x, y), in normalised
    coordinates of the map's cell centres (align_corners=False: -1 and 1 are the image's outer edges)."""
    h, w = logits.shape[-2:]
    p = F.softmax(rearrange(logits.float(), "b n h w -> b n (h w)"), dim=-1)
    ys, xs = ((2 * torch.arange(s, device=logits.device, dtype=p.dtype) + 1) / s - 1 for s in (h, w))
    grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), -1).reshape(-1, 2)       # [(h w), 2] as (x, y)
    return p @ grid


def to_unit(points: torch.Tensor, size: int) -> torch.Tensor:
    """Pixel centres of a size x size image -> soft_argmax's coordinates ([-1, 1] at the image's edges)."""
    return (2 * points + 1) / size - 1


def to_pixels(unit: torch.Tensor, size: int) -> torch.Tensor:
    return (unit + 1) * size / 2 - 0.5


class LandmarkRegressor(nn.Module, StageModel):
    """The few-label landmark regressor of DVE, ContrastLandmark and LEAD (Sec. 4.2) on frozen features: a 1x1
    convolution without bias gives `intermediate` heatmaps per landmark (DVE's code; `shared`: one set of
    `intermediate` for all, the paper's wording), a spatial soft-argmax (logits x softargmax_mul) turns each into
    a virtual keypoint, and a linear map without bias takes each landmark's keypoints to its (x, y). The map
    starts as their mean, so training starts from a sensible shape. Coordinates are normalised like soft_argmax."""

    stage = "regressor"

    def __init__(self, feature_dim: int, num_points: int, intermediate: int = 50, softargmax_mul: float = 100.0,
                 shared: bool = False, features_from: str = "", protocol: str = "", resize: int = 0, crop: int = 0,
                 dataset: str = ""):
        super().__init__()
        # what its input is (regress.py records it in config.json): the feature source it was trained on, and the
        # crops of `dataset`'s faces resized to `resize` and centre-cropped to `crop` (common/protocols.py)
        self.features_from, self.protocol, self.resize, self.crop, self.dataset = \
            features_from, protocol, resize, crop, dataset
        self.num_points, self.intermediate, self.shared, self.softargmax_mul = num_points, intermediate, shared, \
            softargmax_mul
        self.heatmaps = nn.Conv2d(feature_dim, intermediate * (1 if shared else num_points), 1, bias=False)
        mix = torch.zeros(num_points, 2, intermediate, 2)
        mix[:, 0, :, 0] = mix[:, 1, :, 1] = 1 / intermediate
        self.mix = nn.Parameter(rearrange(mix, "k o j c -> k o (j c)"))                 # [K, 2, 2 * intermediate]

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Features [B, C, h, w] -> landmarks [B, K, 2] and the virtual keypoints [B, n, 2]."""
        virtual = soft_argmax(self.heatmaps(features.float()) * self.softargmax_mul)
        if self.shared:
            return torch.einsum("bj,koj->bko", rearrange(virtual, "b j c -> b (j c)"), self.mix), virtual
        per_point = rearrange(virtual, "b (k j) c -> b k (j c)", k=self.num_points)
        return torch.einsum("bkj,koj->bko", per_point, self.mix), virtual
