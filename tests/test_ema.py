"""EMA of the weights: the warm-up decay d_n = min(decay, (1 + n)/(10 + n)) and the averages it produces,
checked against a hand-computed running average."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from mnistdiff.training.ema import ema_decay_at, make_ema


@pytest.mark.parametrize(
    "n,decay,expected",
    [
        (0, 0.999, 1 / 10),
        (1, 0.999, 2 / 11),
        (5, 0.999, 6 / 15),
        (90, 0.999, 91 / 100),
        (10_000, 0.999, 0.999),  # (10001/10010 = 0.99910) capped at the decay
        (8, 0.5, 0.5),  # 9/18 = 0.5 exactly
        (20, 0.5, 0.5),
        (3, 0.0, 0.0),
    ],
)
def test_warmup_decay_values(n, decay, expected):
    assert ema_decay_at(n, decay) == pytest.approx(expected, rel=1e-12)
    t = ema_decay_at(torch.tensor(float(n)), decay)
    assert isinstance(t, torch.Tensor)
    assert float(t) == pytest.approx(expected, rel=1e-6)


def test_warmup_decay_increases_to_cap():
    ds = [ema_decay_at(n, 0.99) for n in range(2000)]
    assert all(b >= a for a, b in zip(ds, ds[1:]))
    assert ds[0] == pytest.approx(0.1)
    assert max(ds) == pytest.approx(0.99)
    # (1 + n)/(10 + n) ≥ 0.99  ⇔  n ≥ 890: the cap takes over there
    assert ds[889] == pytest.approx(890 / 899) and ds[889] < 0.99
    assert ds[891] == 0.99 and ds[1999] == 0.99


def _toy(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 4), nn.SiLU(), nn.Linear(4, 2))


def _flat(m: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in m.parameters()])


@pytest.mark.parametrize("decay", [0.999, 0.6])
def test_ema_equals_hand_computed_average(decay):
    """AveragedModel copies the weights on the first update; update k ≥ 2 uses d = d_{k−1}:

    θ_E ← d·θ_E + (1 − d)·θ_k. Compared against that recursion over 30 random weight vectors.
    """
    model = _toy()
    ema = make_ema(model, decay)
    g = torch.Generator().manual_seed(1)
    expected = None
    for k in range(1, 31):
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(torch.randn(p.shape, generator=g))
        ema.update_parameters(model)
        theta = _flat(model).double()
        if expected is None:
            expected = theta.clone()
        else:
            d = min(decay, (1 + (k - 1)) / (10 + (k - 1)))
            expected = d * expected + (1 - d) * theta
    torch.testing.assert_close(_flat(ema.module).double(), expected, rtol=1e-5, atol=1e-6)


def test_ema_constant_weights_stay_put():
    model = _toy(1)
    ema = make_ema(model, 0.9)
    for _ in range(5):
        ema.update_parameters(model)
    torch.testing.assert_close(_flat(ema.module), _flat(model))


def test_ema_is_a_copy_not_a_view():
    model = _toy(2)
    ema = make_ema(model, 0.9)
    before = _flat(ema.module).clone()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    assert torch.equal(_flat(ema.module), before)  # not updated yet
    ema.update_parameters(model)
    torch.testing.assert_close(_flat(ema.module), _flat(model))  # first update copies


def test_ema_second_update_weights():
    """Two updates with θ₁ = 0 and θ₂ = 1: θ_E = d₁·0 + (1 − d₁)·1 with d₁ = 2/11."""
    model = nn.Linear(2, 2)
    ema = make_ema(model, 0.999)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    ema.update_parameters(model)
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(1.0)
    ema.update_parameters(model)
    torch.testing.assert_close(_flat(ema.module), torch.full((6,), 1 - 2 / 11))


def test_ema_averages_buffers():
    """use_buffers=True: buffers (e.g. BatchNorm running stats) are averaged like parameters."""
    model = nn.BatchNorm1d(3)
    ema = make_ema(model, 0.999)
    with torch.no_grad():
        model.running_mean.zero_()
    ema.update_parameters(model)
    with torch.no_grad():
        model.running_mean.fill_(11.0)
    ema.update_parameters(model)
    torch.testing.assert_close(ema.module.running_mean, torch.full((3,), 11.0 * (1 - 2 / 11)))


def test_ema_forward_uses_averaged_weights():
    model = _toy(3)
    ema = make_ema(model, 0.5)
    ema.update_parameters(model)
    reference = copy.deepcopy(model)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(3.0)
    ema.update_parameters(model)  # d = 2/11
    x = torch.randn(4, 3)
    with torch.no_grad():
        for p_ref, p_new in zip(reference.parameters(), model.parameters()):
            p_ref.copy_(2 / 11 * p_ref + 9 / 11 * p_new)
        torch.testing.assert_close(ema(x), reference(x), rtol=1e-5, atol=1e-6)


def test_ema_during_sgd_lags_the_model():
    """During training the EMA trails the weights: it differs from them but stays between start and end."""
    model = _toy(4)
    ema = make_ema(model, 0.9)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    x, y = torch.randn(16, 3), torch.randn(16, 2)
    start = _flat(model).clone()
    for _ in range(20):
        loss = (model(x) - y).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        ema.update_parameters(model)
    end, avg = _flat(model), _flat(ema.module)
    assert not torch.allclose(avg, end)
    assert (avg - end).norm() < (start - end).norm()
