import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from wsss.config import OptimConfig
from wsss.trainer import build_optimizer, poly_lr, train


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Linear(2, 2)
        self.head = nn.Linear(2, 1)

    def forward(self, x):
        return self.head(self.body(x))

    def new_modules(self):
        return [self.head]


class Dict(TensorDataset):
    def __getitem__(self, i):
        x, y = super().__getitem__(i)
        return {"x": x, "y": y}


def test_param_groups_and_momentum():
    model = Tiny()
    opt = build_optimizer(model, OptimConfig(lr=0.1, head_lr_mult=10, weight_decay=5e-4))
    assert [g["lr"] for g in opt.param_groups] == [0.1, pytest.approx(1.0)]
    assert {id(p) for p in opt.param_groups[1]["params"]} == {
        id(p) for p in model.head.parameters()
    }
    assert opt.defaults["momentum"] == 0.9
    legacy = build_optimizer(model, OptimConfig(weight_decay=5e-4, legacy_psa_momentum=True))
    assert legacy.defaults["momentum"] == 5e-4  # PSA's PolyOptimizer slip


def test_poly_lr():
    assert poly_lr(0.1, 0, 10, 0.9) == 0.1
    assert poly_lr(0.1, 10, 10, 0.9) == 0.0
    assert poly_lr(0.1, 5, 10, 1.0) == pytest.approx(0.05)


def test_training_reduces_loss_and_resumes(tmp_path):
    torch.manual_seed(0)
    x = torch.randn(32, 2)
    data = Dict(x, x.sum(1, keepdim=True))
    calls = []

    def loss_fn(net, batch, info):
        calls.append(info.step)
        return {"mse": ((net(batch["x"]) - batch["y"]) ** 2).mean()}

    model = Tiny()
    state = tmp_path / "state.pt"
    common = dict(batch_size=8, device=torch.device("cpu"), state_path=state, seed=0)
    first = train(model, data, loss_fn, OptimConfig(lr=0.05), epochs=1, **common)
    assert len(calls) == 4 and state.exists()
    # An interrupted 3-epoch run restarted after its first epoch does only epochs 2 and 3,
    # continuing the step count (and so the poly schedule) where it stopped.
    calls.clear()
    last = train(Tiny(), data, loss_fn, OptimConfig(lr=0.05), epochs=3, **common)
    assert calls == list(range(4, 12))
    assert last["mse"] < first["mse"]
