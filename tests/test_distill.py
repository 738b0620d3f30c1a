"""Progressive distillation's pieces against independent computations: the target x̃ makes one DDIM step (the
package's ``ddim_step``) land where two teacher steps did, and the settings are checked. The whole command (rounds,
the student's file, sampling it) runs in ``tests/test_cli.py``."""

from __future__ import annotations

import pytest
import torch

from mnistdiff.config import ConfigError
from mnistdiff.ddim import ddim_step
from mnistdiff.schedules import NoiseSchedule
from mnistdiff.training.distill import DistillConfig, distillation_target


@pytest.mark.parametrize("t,t_end", [(900, 700), (400, 100), (50, -1)])
def test_one_ddim_step_with_the_target_lands_on_the_teachers_result(t, t_end):
    sched = NoiseSchedule.make("cosine", 1000)
    abar = sched.alphas_cumprod.double()
    g = torch.Generator().manual_seed(0)
    z_t, z_end = torch.randn(3, 2, 4, 4, generator=g, dtype=torch.float64), torch.randn(3, 2, 4, 4, generator=g,
                                                                                         dtype=torch.float64)
    a_t = abar[t].view(1, 1, 1, 1)
    a_end = (abar[t_end] if t_end >= 0 else torch.tensor(1.0, dtype=torch.float64)).view(1, 1, 1, 1)
    x0 = distillation_target(z_t, z_end, a_t, a_end)
    eps = (z_t - a_t.sqrt() * x0) / (1 - a_t).sqrt()  # the ε̂ that goes with that x̂_0
    landed, _ = ddim_step(sched, z_t, eps, t, t_end, eta=0.0, clip_range=None)
    torch.testing.assert_close(landed, z_end)


@pytest.mark.parametrize("kwargs,message", [
    ({"steps": 4, "start_steps": 12}, "start_steps must be steps × 2, 4, 8"),
    ({"steps": 4, "start_steps": 4}, "start_steps must be steps × 2, 4, 8"),
    ({"guidance": -1.0}, "guidance must be a finite number >= 0"),
    ({"iterations": 0}, "iterations must be a positive number"),
])
def test_bad_settings_are_refused_by_name(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        DistillConfig(**kwargs)
