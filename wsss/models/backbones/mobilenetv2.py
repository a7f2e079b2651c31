"""MobileNetV2 with torchvision's exact parameter names, classifier removed.

``features.0`` = conv-BN-ReLU6 (``features.0.0``/``features.0.1``), ``features.1..17`` =
``InvertedResidual`` (``features.N.conv.*``), ``features.18`` = 1x1 conv-BN-ReLU6 to 1280.
torchvision's ImageNet checkpoint (``mobilenet_v2-b0353104.pth``) loads strictly once its
``classifier.*`` keys are dropped. Output stride 16/8 turns the later strides into dilation of
the depthwise 3x3 convs, as DeepLabV3-MobileNet does.
"""

from __future__ import annotations

from torch import Tensor, nn

from wsss.models.backbones import Backbone, check_output_stride, init_weights

# expand ratio t, channels c, repeats n, first stride s (torchvision, width_mult 1.0)
SETTINGS: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)
# index in ``features`` after which a stage ends (its output is returned by forward)
STAGE_ENDS: tuple[int, ...] = (3, 6, 13, 17, 18)


class ConvBNReLU6(nn.Sequential):
    """Conv (no bias) -> BN -> ReLU6 with keys ``0``, ``1`` (torchvision's layout)."""

    def __init__(
        self, inp: int, out: int, kernel: int = 3, stride: int = 1, dilation: int = 1, groups=1
    ) -> None:
        padding = (kernel - 1) // 2 * dilation
        super().__init__(
            nn.Conv2d(inp, out, kernel, stride, padding, dilation, groups=groups, bias=False),
            nn.BatchNorm2d(out),
            nn.ReLU6(inplace=True),
        )


class InvertedResidual(nn.Module):
    """1x1 expand (if t > 1) -> 3x3 depthwise (stride, dilation) -> 1x1 linear projection."""

    def __init__(self, inp: int, out: int, stride: int, dilation: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = inp * expand_ratio
        self.use_res_connect = stride == 1 and inp == out
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvBNReLU6(inp, hidden, kernel=1))
        layers += [
            ConvBNReLU6(hidden, hidden, stride=stride, dilation=dilation, groups=hidden),
            nn.Conv2d(hidden, out, 1, bias=False),
            nn.BatchNorm2d(out),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        """x: [B, inp, H, W] -> [B, out, H / stride, W / stride]."""
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2(Backbone):
    """MobileNetV2 trunk (``features`` only).

    forward returns the outputs of features.3, .6, .13, .17 and .18:
    channels [24, 32, 96, 320, 1280]; strides [4, 8, 16, 32, 32] at OS32, [4, 8, 16, 16, 16]
    at OS16 and [4, 8, 8, 8, 8] at OS8.
    """

    classifier_prefixes = ("classifier.",)

    def __init__(self, output_stride: int = 16) -> None:
        super().__init__()
        check_output_stride(output_stride)
        features: list[nn.Module] = [ConvBNReLU6(3, 32, stride=2)]
        inp, current_stride, dilation = 32, 2, 1
        strides = [2]
        for t, c, n, s in SETTINGS:
            previous_dilation = dilation
            if current_stride * s > output_stride:
                stride, dilation = 1, dilation * s
            else:
                stride, current_stride = s, current_stride * s
            for i in range(n):
                if i == 0:
                    features.append(InvertedResidual(inp, c, stride, previous_dilation, t))
                else:
                    features.append(InvertedResidual(inp, c, 1, dilation, t))
                inp = c
                strides.append(current_stride)
        features.append(ConvBNReLU6(inp, 1280, kernel=1))
        strides.append(current_stride)
        self.features = nn.Sequential(*features)
        self.channels = [24, 32, 96, 320, 1280]
        self.strides = [strides[i] for i in STAGE_ENDS]
        self.output_stride = output_stride
        init_weights(self)

    def forward(self, x: Tensor) -> list[Tensor]:
        """x: [B, 3, H, W] normalised -> five maps (see the class docstring)."""
        feats = []
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in STAGE_ENDS:
                feats.append(x)
        return feats
