"""The VAE's adversarial term (issue 22): the hinge losses by hand, which player each term moves (with Esser et
al.'s adaptive weight), and a run with a critic whose model file holds the VAE alone and resumes bit for bit."""

from __future__ import annotations

import os
import signal

import pytest
import torch
import torch.nn.functional as F

from mnistdiff.config import TrainConfig, VAEConfig, VAERunConfig
from mnistdiff.modelfile import load_vae
from mnistdiff.training.adversarial import PatchCritic, VAEWithCritic, adversarial_vae_loss, hinge_critic_loss
from mnistdiff.training.loop import TrainingInterrupted
from mnistdiff.training.pipelines import train_vae
from mnistdiff.vae import VAE

TINY = VAEConfig(base_channels=8, channel_mults=(1, 2, 2), norm_groups=4)


def _pair(seed: int = 0) -> VAEWithCritic:
    torch.manual_seed(seed)
    return VAEWithCritic(VAE(TINY), PatchCritic(channels=8, groups=4)).train()


def test_hinge_critic_loss_by_hand():
    real, fake = torch.tensor([2.0, 0.5, -1.0]), torch.tensor([-3.0, 0.0, 0.25])
    # max(0, 1 - D(x)): 0, 0.5, 2 → mean 2.5/3; max(0, 1 + D(x̂)): 0, 1, 1.25 → mean 2.25/3
    assert float(hinge_critic_loss(real, fake)) == pytest.approx(2.5 / 3 + 2.25 / 3)


def test_patch_critic_scores_patches():
    assert PatchCritic()(torch.zeros(3, 1, 32, 32)).shape == (3, 1, 8, 8)


def _grads(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: (p.grad.clone() if p.grad is not None else torch.zeros_like(p)) for k, p in module.named_parameters()}


def test_each_term_moves_only_its_own_player():
    """The VAE's gradient is that of −ELBO + λ·(−D(x̂)); the critic's that of the hinge loss on x and a detached x̂."""
    x = torch.rand(4, 1, 32, 32) * 2 - 1
    noise = torch.randn(4, 2, 4, 4)
    m = _pair()
    adversarial_vae_loss(m, x, 1e-3, 0.7, noise).backward()
    got_vae, got_critic = _grads(m.vae), _grads(m.critic)

    ref = _pair()  # the same weights, the two players' losses written out and differentiated separately
    recon, post = ref.vae(x, noise)
    elbo = F.mse_loss(recon, x, reduction="none").flatten(1).sum(1).mean() + 1e-3 * post.kl().mean()
    fool = -ref.critic(recon).mean()
    last = ref.vae.decoder.net[-1].weight  # Esser et al.'s λ: the two gradients' norms at the last layer, by hand
    g_rec, g_adv = (torch.autograd.grad(loss, last, retain_graph=True)[0] for loss in (elbo, fool))
    lam = 0.7 * float(g_rec.norm()) / (float(g_adv.norm()) + 1e-4)
    assert 0 < lam < 1e4
    vae_grads = torch.autograd.grad(elbo + lam * fool, list(ref.vae.parameters()), retain_graph=True)
    critic_loss = F.relu(1 - ref.critic(x)).mean() + F.relu(1 + ref.critic(recon.detach())).mean()
    critic_grads = torch.autograd.grad(critic_loss, list(ref.critic.parameters()))
    # float32 sums in another order: compare to a tolerance scaled by each gradient (a wrong routing is off by O(1))
    for (name, g), want in zip(got_vae.items(), vae_grads):
        torch.testing.assert_close(g, want, rtol=1e-3, atol=1e-4 * float(want.abs().max()), msg=name)
    for (name, g), want in zip(got_critic.items(), critic_grads):
        torch.testing.assert_close(g, want, rtol=1e-3, atol=1e-4 * float(want.abs().max()), msg=name)


def test_in_eval_mode_the_loss_is_the_negative_elbo():
    x = torch.rand(4, 1, 32, 32) * 2 - 1
    noise = torch.randn(4, 2, 4, 4)
    m = _pair().eval()
    recon, post = m.vae(x, noise)
    elbo = F.mse_loss(recon, x, reduction="none").flatten(1).sum(1).mean() + 1e-3 * post.kl().mean()
    torch.testing.assert_close(adversarial_vae_loss(m, x, 1e-3, 0.7, noise), elbo)


def _cfg() -> VAERunConfig:
    return VAERunConfig(vae=TINY, adv_weight=0.5,
                        train=TrainConfig(epochs=2, batch_size=16, lr=1e-3, warmup_steps=1, subset=48, eval_size=16,
                                          num_samples=4, sample_every=1, snapshot_every=1))


def test_a_run_with_a_critic_saves_the_vae_alone_and_resumes_bit_exactly(tmp_path, monkeypatch):
    plain = train_vae(_cfg(), out=tmp_path / "plain", progress=False)
    vae = load_vae(plain.checkpoint)
    assert set(vae.state_dict()) == set(VAE(TINY).state_dict())
    assert vae.meta["config"]["adv_weight"] == 0.5
    assert set(load_vae(plain.experiment.path / "snapshots" / "epoch_001.safetensors").state_dict()) == set(
        VAE(TINY).state_dict())

    import mnistdiff.training.pipelines as pipelines

    real_run = pipelines._run
    calls = []

    def interrupting(task, *args, **kwargs):  # SIGTERM after the first epoch's samples
        shown = task.sample_fn
        task.sample_fn = lambda m, folder, tag: (shown(m, folder, tag),
                                                 tag == "epoch_001" and os.kill(os.getpid(), signal.SIGTERM))
        calls.append(task)
        return real_run(task, *args, **kwargs)

    monkeypatch.setattr(pipelines, "_run", interrupting)
    with pytest.raises(TrainingInterrupted):
        train_vae(_cfg(), out=tmp_path / "cut", progress=False)
    monkeypatch.setattr(pipelines, "_run", real_run)
    exp = next((tmp_path / "cut").iterdir())
    resumed = train_vae(_cfg(), resume=exp, progress=False)
    for k, v in plain.ema_model.state_dict().items():
        assert torch.equal(v, resumed.ema_model.state_dict()[k]), k
