import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from wsss.config import OptimConfig
from wsss.methods import METHODS
from wsss.methods.handover import HandOverGate
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


def test_a_resumed_run_keeps_the_hand_over_step_of_its_ramp(tmp_path):
    """A run stopped after an epoch and resumed ends with the uninterrupted run's weights.

    The auxiliary term ramps from the gate's hand-over step, as KTSE's SSR/SIE/MGA do; without
    the gate in the epoch checkpoint the resumed run would restart the ramp at its first step.
    """
    torch.manual_seed(0)
    x = torch.randn(32, 2)
    data = Dict(x, x.sum(1, keepdim=True))

    def run(state_path, stop_after=None):
        gate = HandOverGate()

        def loss_fn(net, batch, info):
            mse = ((net(batch["x"]) - batch["y"]) ** 2).mean()
            cams = torch.ones(1, 1, 1, 1)
            open_ = info.step >= 2 and gate.is_open(info, cams, torch.ones(1, 1), 0.0)
            ramp = min(1.0, (info.step - gate.opened_at + 1) / 6) if open_ else 0.0
            return {"mse": mse, "aux": ramp * net(batch["x"]).abs().mean()}

        def stop(epoch, means, model):
            if epoch == stop_after:
                raise KeyboardInterrupt  # killed before this epoch's state is saved

        torch.manual_seed(1)  # the same initial weights for every run
        model = Tiny()
        common = dict(batch_size=8, device=torch.device("cpu"), state_path=state_path, seed=0)
        train(
            model,
            data,
            loss_fn,
            OptimConfig(lr=0.05),
            epochs=3,
            on_epoch_end=stop,
            extra_state=gate,
            **common,
        )
        return model, gate

    whole, whole_gate = run(tmp_path / "whole.pt")
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "resumed.pt", stop_after=2)  # epoch 1 saved, epoch 2 lost
    resumed, resumed_gate = run(tmp_path / "resumed.pt")
    assert whole_gate.opened_at == resumed_gate.opened_at == 2
    for a, b in zip(whole.state_dict().values(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_a_methods_training_state_round_trips(name):
    """KTSE's and CPN's hand-over step goes into the epoch checkpoint; others have none."""
    cls = METHODS[name]
    method = cls(cls.Config())
    fresh = cls(cls.Config())
    if method.gate is None:
        assert method.state_dict() == {}
        return
    method.gate.opened_at = 37
    fresh.load_state_dict(method.state_dict())
    assert fresh.gate.opened_at == 37
