"""ResNet-38 ("A1" wide ResNet of Wu et al.) as used by PSA, SEAM, EPS, CPN, FBR and KTSE.

Module and parameter names follow jiwoon-ahn/psa ``network/resnet38d.py`` (``conv1a``,
``b2.bn_branch2a``, ``b2.conv_branch2a``, ``b2.conv_branch1``, ``b6.conv_branch2b2``, ``bn7``
...), so the converted ``.pth`` checkpoints of those repositories (psa's
``convert_mxnet_to_torch`` output of ``ilsvrc-cls_rna-a1_cls1000_ep-0001.params``) load with
strict key checking. Blocks are pre-activation: each starts with BN + ReLU of its input.

Layout (output stride 8, psa's only setting): conv1a 3x3 64 (stride 1); b2-b2_2 128 (stride 2);
b3-b3_2 256 (stride 2); b4-b4_5 512 (stride 2); b5-b5_2 (512, 1024) dilation 2; b6 bottleneck
(512, 1024, 2048) dilation 4, dropout 0.3; b7 bottleneck (1024, 2048, 4096) dilation 4, dropout
0.5; bn7. Output stride 16 puts stride 2 on b5 (dilations 1, 2, 2); 32 also on b6 (no dilation).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from wsss.models.backbones import Backbone, check_output_stride, init_weights


class ResBlock(nn.Module):
    """Pre-activation basic block: BN-ReLU -> 3x3 (stride) -> BN-ReLU -> 3x3, plus shortcut."""

    def __init__(
        self,
        in_channels: int,
        mid_channels: int,
        out_channels: int,
        stride: int = 1,
        first_dilation: int | None = None,
        dilation: int = 1,
    ) -> None:
        super().__init__()
        self.same_shape = in_channels == out_channels and stride == 1
        first_dilation = dilation if first_dilation is None else first_dilation
        self.bn_branch2a = nn.BatchNorm2d(in_channels)
        self.conv_branch2a = nn.Conv2d(
            in_channels, mid_channels, 3, stride, first_dilation, first_dilation, bias=False
        )
        self.bn_branch2b1 = nn.BatchNorm2d(mid_channels)
        self.conv_branch2b1 = nn.Conv2d(
            mid_channels, out_channels, 3, padding=dilation, dilation=dilation, bias=False
        )
        if not self.same_shape:
            self.conv_branch1 = nn.Conv2d(in_channels, out_channels, 1, stride, bias=False)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x: [B, in, H, W] -> (out [B, out, H/s, W/s], relu(bn_branch2a(x)) [B, in, H, W])."""
        x_bn_relu = F.relu(self.bn_branch2a(x))
        branch1 = x if self.same_shape else self.conv_branch1(x_bn_relu)
        branch2 = self.conv_branch2a(x_bn_relu)
        branch2 = self.conv_branch2b1(F.relu(self.bn_branch2b1(branch2)))
        return branch1 + branch2, x_bn_relu


class ResBlockBot(nn.Module):
    """Pre-activation bottleneck: 1x1 (stride) -> 3x3 (dilation) -> 1x1, dropout inside."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int = 1,
        dilation: int = 1,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.same_shape = in_channels == out_channels and stride == 1
        self.bn_branch2a = nn.BatchNorm2d(in_channels)
        self.conv_branch2a = nn.Conv2d(in_channels, out_channels // 4, 1, stride, bias=False)
        self.bn_branch2b1 = nn.BatchNorm2d(out_channels // 4)
        self.dropout_2b1 = nn.Dropout2d(dropout)
        self.conv_branch2b1 = nn.Conv2d(
            out_channels // 4, out_channels // 2, 3, padding=dilation, dilation=dilation, bias=False
        )
        self.bn_branch2b2 = nn.BatchNorm2d(out_channels // 2)
        self.dropout_2b2 = nn.Dropout2d(dropout)
        self.conv_branch2b2 = nn.Conv2d(out_channels // 2, out_channels, 1, bias=False)
        if not self.same_shape:
            self.conv_branch1 = nn.Conv2d(in_channels, out_channels, 1, stride, bias=False)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x: [B, in, H, W] -> (out [B, out, H/s, W/s], relu(bn_branch2a(x)) [B, in, H, W])."""
        x_bn_relu = F.relu(self.bn_branch2a(x))
        branch1 = x if self.same_shape else self.conv_branch1(x_bn_relu)
        branch2 = self.conv_branch2a(x_bn_relu)
        branch2 = self.conv_branch2b1(self.dropout_2b1(F.relu(self.bn_branch2b1(branch2))))
        branch2 = self.conv_branch2b2(self.dropout_2b2(F.relu(self.bn_branch2b2(branch2))))
        return branch1 + branch2, x_bn_relu


class ResNet38d(Backbone):
    """ResNet-38 trunk (psa names). 4096 output channels.

    forward returns five maps, each the BN-ReLU'd output of a stage (the pre-activation that the
    next block computes anyway; psa's ``conv4``/``conv5``/``conv6`` are the last three):

    ====== ========================================== ======== ==================
    index  taken at                                   channels stride (OS 8/16/32)
    ====== ========================================== ======== ==================
    0      relu(b3.bn_branch2a(b2_2 out))             128      2 / 2 / 2
    1      relu(b4.bn_branch2a(b3_2 out))             256      4 / 4 / 4
    2      relu(b5.bn_branch2a(b4_5 out)) = conv4     512      8 / 8 / 8
    3      relu(b6.bn_branch2a(b5_2 out)) = conv5     1024     8 / 16 / 16
    4      relu(bn7(b7 out))              = conv6     4096     8 / 16 / 32
    ====== ========================================== ======== ==================
    """

    classifier_prefixes = ("fc8.", "linear1000")
    # psa's ``not_training``: the ImageNet stem that PSA, SEAM, EPS, CPN and KTSE never train.
    stem_names = ("conv1a", "b2", "b2_1", "b2_2")

    def freeze_stem(self) -> None:
        """Stops gradients to conv1a, b2, b2_1 and b2_2 (the optimiser then leaves them out)."""
        for name in self.stem_names:
            getattr(self, name).requires_grad_(False)

    def __init__(self, output_stride: int = 8) -> None:
        super().__init__()
        check_output_stride(output_stride)
        s5, s6 = {8: (1, 1), 16: (2, 1), 32: (2, 2)}[output_stride]
        d5 = 2 if output_stride == 8 else 1  # dilation of b5_1, b5_2
        d67 = {8: 4, 16: 2, 32: 1}[output_stride]  # dilation of b6, b7

        self.conv1a = nn.Conv2d(3, 64, 3, padding=1, bias=False)

        self.b2 = ResBlock(64, 128, 128, stride=2)
        self.b2_1 = ResBlock(128, 128, 128)
        self.b2_2 = ResBlock(128, 128, 128)

        self.b3 = ResBlock(128, 256, 256, stride=2)
        self.b3_1 = ResBlock(256, 256, 256)
        self.b3_2 = ResBlock(256, 256, 256)

        self.b4 = ResBlock(256, 512, 512, stride=2)
        self.b4_1 = ResBlock(512, 512, 512)
        self.b4_2 = ResBlock(512, 512, 512)
        self.b4_3 = ResBlock(512, 512, 512)
        self.b4_4 = ResBlock(512, 512, 512)
        self.b4_5 = ResBlock(512, 512, 512)

        self.b5 = ResBlock(512, 512, 1024, stride=s5, first_dilation=1, dilation=d5)
        self.b5_1 = ResBlock(1024, 512, 1024, dilation=d5)
        self.b5_2 = ResBlock(1024, 512, 1024, dilation=d5)

        self.b6 = ResBlockBot(1024, 2048, stride=s6, dilation=d67, dropout=0.3)
        self.b7 = ResBlockBot(2048, 4096, dilation=d67, dropout=0.5)
        self.bn7 = nn.BatchNorm2d(4096)

        self.channels = [128, 256, 512, 1024, 4096]
        self.strides = [2, 4, 8, 8 * s5, 8 * s5 * s6]
        self.output_stride = output_stride
        init_weights(self)

    def forward(self, x: Tensor) -> list[Tensor]:
        """x: [B, 3, H, W] normalised -> five maps (see the class docstring)."""
        x = self.conv1a(x)
        for block in (self.b2, self.b2_1, self.b2_2):
            x, _ = block(x)
        x, conv2 = self.b3(x)
        x, _ = self.b3_1(x)
        x, _ = self.b3_2(x)
        x, conv3 = self.b4(x)
        for block in (self.b4_1, self.b4_2, self.b4_3, self.b4_4, self.b4_5):
            x, _ = block(x)
        x, conv4 = self.b5(x)
        x, _ = self.b5_1(x)
        x, _ = self.b5_2(x)
        x, conv5 = self.b6(x)
        x, _ = self.b7(x)
        conv6 = F.relu(self.bn7(x))
        return [conv2, conv3, conv4, conv5, conv6]
