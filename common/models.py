"""Networks shared by the stages: the ResNet encoder with hypercolumns, and BYOL's MLP heads.

Models handed between stages inherit `PyTorchModelHubMixin`: their constructor arguments are their
config, so `save_pretrained` writes config.json + model.safetensors and `from_pretrained` takes a
folder or a Hub id; the next stage never needs the previous one's flags.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from einops import rearrange
from huggingface_hub import PyTorchModelHubMixin

ARCHS = ("resnet18", "resnet34", "resnet50")
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class ResNetEncoder(nn.Module, PyTorchModelHubMixin):
    """A torchvision ResNet, randomly initialised, that takes images in [0, 1] (it normalises them).

    forward(x) -> the globally pooled layer-4 vector [B, width] (BYOL's representation);
    hypercolumn(x) -> layers 1-4 upsampled bilinearly to 1/4 of the input and concatenated
    [B, 3840, H/4, W/4] for resnet50 (960 for resnet18/34), each layer L2-normalised over its
    channels by default (as ContrastLandmark does for matching).
    """

    def __init__(self, arch: str = "resnet50", normalize_layers: bool = True,
                 mean: tuple = IMAGENET_MEAN, std: tuple = IMAGENET_STD):
        super().__init__()
        if arch not in ARCHS:
            raise ValueError(f"arch must be one of {ARCHS}, got {arch!r}")
        net = getattr(torchvision.models, arch)(weights=None)
        self.arch, self.normalize_layers = arch, normalize_layers
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

    def layers(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Layer 1-4 maps at strides 4, 8, 16, 32 of images x in [0, 1]."""
        x = self.stem((x - self.mean) / self.std)
        out = []
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = layer(x)
            out.append(x)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rearrange(F.adaptive_avg_pool2d(self.layers(x)[-1], 1), "b c 1 1 -> b c")

    def hypercolumn(self, x: torch.Tensor) -> torch.Tensor:
        maps = self.layers(x)
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
