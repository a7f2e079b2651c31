"""Small stand-ins shared by the network tests."""

import torch
from torch import nn


class StubBackbone(nn.Module):
    """1x1 conv + ReLU at stride 4: a tiny stand-in with the backbone contract."""

    out_channels = 6
    channels = [6]

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 1)

    def forward(self, x):
        return [torch.relu(self.conv(x[:, :, ::4, ::4]))]
