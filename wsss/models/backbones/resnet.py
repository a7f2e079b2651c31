"""ResNet-50/101 with torchvision's exact parameter names (v1.5: stride on the 3x3 conv).

A torchvision ImageNet checkpoint (``resnet50-0676ba61.pth``, ``resnet50-19c8e357.pth``, ...)
loads strictly once its ``fc.*`` keys are dropped. Output stride 16/8 replaces the stride of
layer4 (and layer3) by dilation, as torchvision's ``replace_stride_with_dilation`` does.
"""

from __future__ import annotations

from torch import Tensor, nn

from wsss.models.backbones import Backbone, check_output_stride, init_weights


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (stride, dilation) -> 1x1 (x4 channels) with an identity/projection shortcut."""

    expansion = 4

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        dilation: int = 1,
        downsample: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(
            planes, planes, 3, stride=stride, padding=dilation, dilation=dilation, bias=False
        )
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        """x: [B, inplanes, H, W] -> [B, 4 * planes, H / stride, W / stride]."""
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(Backbone):
    """Bottleneck ResNet trunk without ``avgpool``/``fc``.

    forward returns [layer1, layer2, layer3, layer4] with channels [256, 512, 1024, 2048] and
    strides [4, 8, 16, 32] (OS32), [4, 8, 16, 16] (OS16) or [4, 8, 8, 8] (OS8).
    """

    classifier_prefixes = ("fc.",)

    def __init__(self, layers: tuple[int, int, int, int], output_stride: int = 16) -> None:
        super().__init__()
        check_output_stride(output_stride)
        # torchvision's replace_stride_with_dilation for layer2, layer3, layer4
        dilate = {32: (False, False, False), 16: (False, False, True), 8: (False, True, True)}
        self.inplanes = 64
        self.dilation = 1
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(64, layers[0])
        self.layer2 = self._make_layer(128, layers[1], stride=2, dilate=dilate[output_stride][0])
        self.layer3 = self._make_layer(256, layers[2], stride=2, dilate=dilate[output_stride][1])
        self.layer4 = self._make_layer(512, layers[3], stride=2, dilate=dilate[output_stride][2])
        self.channels = [256, 512, 1024, 2048]
        self.strides = [4, 8, min(16, output_stride), output_stride]
        self.output_stride = output_stride
        init_weights(self)

    def _make_layer(self, planes: int, blocks: int, stride: int = 1, dilate: bool = False):
        previous_dilation = self.dilation
        if dilate:
            self.dilation *= stride
            stride = 1
        downsample = None
        if stride != 1 or self.inplanes != planes * Bottleneck.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * Bottleneck.expansion, 1, stride, bias=False),
                nn.BatchNorm2d(planes * Bottleneck.expansion),
            )
        layers = [Bottleneck(self.inplanes, planes, stride, previous_dilation, downsample)]
        self.inplanes = planes * Bottleneck.expansion
        layers += [
            Bottleneck(self.inplanes, planes, dilation=self.dilation) for _ in range(1, blocks)
        ]
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> list[Tensor]:
        """x: [B, 3, H, W] normalised -> [layer1, layer2, layer3, layer4] feature maps."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        feats = []
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = layer(x)
            feats.append(x)
        return feats


def resnet50(output_stride: int = 16) -> ResNet:
    """ResNet-50 (torchvision names), randomly initialised."""
    return ResNet((3, 4, 6, 3), output_stride)


def resnet101(output_stride: int = 16) -> ResNet:
    """ResNet-101 (torchvision names), randomly initialised."""
    return ResNet((3, 4, 23, 3), output_stride)
