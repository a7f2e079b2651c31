"""Batch normalisation with frozen statistics and affine parameters.

The WSSS papers keep the backbone's BN fixed: IRN uses ``FixedBatchNorm`` everywhere and PSA's
ResNet-38 keeps every BN in eval mode with ``requires_grad=False`` on its affine parameters.
Batches of 4-16 crops are too small to re-estimate ImageNet statistics, so freezing is the norm.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm2d in eval mode with every tensor a buffer (nothing trainable).

    State dict keys match ``nn.BatchNorm2d`` (``weight``, ``bias``, ``running_mean``,
    ``running_var``); a ``num_batches_tracked`` entry in a loaded state dict is ignored.
    """

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ) -> None:
        state_dict.pop(prefix + "num_batches_tracked", None)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def forward(self, x: Tensor) -> Tensor:
        """x: [B, C, H, W] -> [B, C, H, W]."""
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        shift = self.bias - self.running_mean * scale
        return x * scale.reshape(1, -1, 1, 1) + shift.reshape(1, -1, 1, 1)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}"

    @classmethod
    def from_batchnorm(cls, bn: nn.BatchNorm2d) -> FrozenBatchNorm2d:
        """A frozen copy of ``bn``'s running statistics and affine parameters."""
        if not bn.track_running_stats:
            raise ValueError("cannot freeze a BatchNorm without running statistics")
        frozen = cls(bn.num_features, bn.eps)
        with torch.no_grad():
            if bn.affine:
                frozen.weight.copy_(bn.weight)
                frozen.bias.copy_(bn.bias)
            frozen.running_mean.copy_(bn.running_mean)
            frozen.running_var.copy_(bn.running_var)
        return frozen.to(bn.running_mean.device)


def freeze_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every ``nn.BatchNorm2d`` (and ``SyncBatchNorm``) inside ``module`` in place.

    Returns ``module`` itself, or a new ``FrozenBatchNorm2d`` when ``module`` is a BN layer.
    A BN without running statistics would normalise with batch statistics; it is refused.
    """
    if isinstance(module, (nn.BatchNorm2d, nn.SyncBatchNorm)):
        return FrozenBatchNorm2d.from_batchnorm(module)
    for name, child in module.named_children():
        frozen = freeze_batchnorm(child)
        if frozen is not child:
            setattr(module, name, frozen)
    return module
