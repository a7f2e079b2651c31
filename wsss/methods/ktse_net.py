"""KTSE's classification network: a 2-layer C+1-channel CAM head and gated pyramid pooling.

Head (KTSE ``networks/resnet38d.py::Net_gpp``, fc8/fc9 as in AEFT)::

    F     = fc9(ReLU(fc8(features)))     fc8: 1x1 D -> 256, fc9: 1x1 256 -> C+1, no bias, Xavier
    F_bg  = F[:, 0]                      background channel, trained only by the SSR cross-entropy
    F_fg  = F[:, 1:]                     "CAM features" of the C foreground classes

Scores come from the gated pyramid pooling (GPP) of AEFT (Yoon et al., ECCV 2022), applied to
F_fg only, or (``score="gap"``) from its global average as in a plain CAM network; CAM inference
ignores the score head and returns ReLU(F_fg).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from wsss.models.cam_net import CamNet


class GatedConv(nn.Module):
    """AEFT ``gconv``: gates two C-channel maps into one, separately for the + and - parts.

    a+ = sigmoid(conv3x3([ReLU(x), ReLU(y)])), a- = sigmoid(conv3x3([ReLU(-x), ReLU(-y)]))
    out = (ReLU(x) a+_0 + ReLU(y) a+_1) / 2 - (ReLU(-x) a-_0 + ReLU(-y) a-_1) / 2
    """

    def __init__(self, channels: int):
        super().__init__()
        self.att_p = nn.Conv2d(2 * channels, 2, 3, padding=1, bias=False)
        self.att_n = nn.Conv2d(2 * channels, 2, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """x, y [B, C, h, w] -> [B, C, h, w]."""
        xp, yp, xn, yn = F.relu(x), F.relu(y), F.relu(-x), F.relu(-y)
        ap = torch.sigmoid(self.att_p(torch.cat([xp, yp], dim=1)))
        an = torch.sigmoid(self.att_n(torch.cat([xn, yn], dim=1)))
        pos = (xp * ap[:, 0:1] + yp * ap[:, 1:2]) / 2
        neg = (xn * an[:, 0:1] + yn * an[:, 1:2]) / 2
        return pos - neg


class GatedPyramidPooling(nn.Module):
    """GPP scores from CAM features: [B, C, h, w] -> logits [B, C] (KTSE paper Sec. 3.1).

    P_s = upsample(adaptive_avg_pool_s(F)) for s in ``scales``; G = gconv(...gconv(P_2, P_4)...,
    P_16); q = GAP(ReLU(F) ReLU(G)) - GAP(ReLU(-F) ReLU(-G)).
    """

    def __init__(self, channels: int, scales: tuple[int, ...] = (2, 4, 8, 16)):
        super().__init__()
        if len(scales) < 2:
            raise ValueError(f"GPP needs at least two pyramid scales, got {scales}")
        self.scales = tuple(scales)
        self.gconvs = nn.ModuleList(GatedConv(channels) for _ in scales[1:])

    def forward(self, cams: torch.Tensor) -> torch.Tensor:
        size = cams.shape[-2:]
        pools = [
            F.interpolate(
                F.adaptive_avg_pool2d(cams, s), size=size, mode="bilinear", align_corners=False
            )
            for s in self.scales
        ]
        gate = pools[0]
        for gconv, pooled in zip(self.gconvs, pools[1:], strict=True):
            gate = gconv(gate, pooled)
        pos = (F.relu(cams) * F.relu(gate)).mean(dim=(2, 3))
        neg = (F.relu(-cams) * F.relu(-gate)).mean(dim=(2, 3))
        return pos - neg


class KTSENet(CamNet):
    """backbone -> fc8 (ReLU) -> fc9 (C+1 maps, channel 0 = background) -> GPP scores.

    ``forward(x)`` returns {"logits": GPP scores [B, C], "cams": F_fg raw [B, C, h, w],
    "cams_all": F raw [B, C+1, h, w], "features": deepest backbone map}; with
    ``with_logits=False`` the GPP is skipped ("logits" absent), for the auxiliary branches.
    ``cam(x)`` = ReLU(F_fg): the C foreground maps only, no GPP. ``score="gap"`` replaces the
    GPP scores by GAP(F_fg) (and the network has no GPP module).
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        head_dim: int = 256,
        gpp_scales: tuple[int, ...] = (2, 4, 8, 16),
        score: str = "gpp",
    ):
        super().__init__(backbone, num_classes)
        if score not in ("gpp", "gap"):
            raise ValueError(f"score must be gpp or gap, got {score!r}")
        self.score = score
        del self.classifier  # replaced by the two-layer C+1 head
        self.fc8 = nn.Conv2d(backbone.out_channels, head_dim, 1, bias=False)
        self.fc9 = nn.Conv2d(head_dim, num_classes + 1, 1, bias=False)
        nn.init.xavier_uniform_(self.fc8.weight)
        nn.init.xavier_uniform_(self.fc9.weight)
        self.gpp = GatedPyramidPooling(num_classes, gpp_scales) if score == "gpp" else None

    def head(self, feature: torch.Tensor) -> torch.Tensor:
        """Deepest backbone map [B, D, h, w] -> all C+1 CAM features [B, C+1, h, w]."""
        return self.fc9(F.relu(self.fc8(feature)))

    def forward(self, x: torch.Tensor, with_logits: bool = True) -> dict[str, torch.Tensor]:
        feature = self.features(x)[-1]
        cams_all = self.head(feature)
        out = {"cams": cams_all[:, 1:], "cams_all": cams_all, "features": feature}
        if with_logits:
            fg = cams_all[:, 1:]
            scores = self.gpp(fg) if self.score == "gpp" else fg.mean(dim=(2, 3))
            out["logits"] = self.biased(scores)
        return out

    def cam(self, x: torch.Tensor) -> torch.Tensor:
        """ReLU'd foreground CAMs [B, C, h, w] (Eq. 1 before max normalisation)."""
        return F.relu(self.head(self.features(x)[-1])[:, 1:])

    def head_modules(self) -> list[nn.Module]:
        return [m for m in (self.fc8, self.fc9, self.gpp) if m is not None]
