"""Under Lightning's automatic optimization, Lightning creates, clips, zeroes and steps the
optimizer: the guard installed the way ``clipcheck run`` installs it stays silent on a correct
module (weights bit-identical) and names the user's own code when a mistake happens: the hook
they wrote, or their ``training_step`` when the offending call is Lightning's."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
lightning = pytest.importorskip("lightning")

from conftest import marked_line  # noqa: E402

import clipcheck.runtime as rt  # noqa: E402

logging.getLogger("lightning").setLevel(logging.ERROR)
logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)


class Regressor(lightning.LightningModule):
    def __init__(self, zero_in_hook: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
        self.zero_in_hook = zero_in_hook

    def training_step(self, batch, batch_idx):  # <- training_step
        x, y = batch
        return torch.nn.functional.mse_loss(self.net(x), y) * 100

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)

    def on_before_optimizer_step(self, optimizer) -> None:
        if self.zero_in_hook:
            optimizer.zero_grad()  # <- hook-zero


class ManualRegressor(Regressor):
    """Manual optimization with the zero-grad misplaced between backward and step."""

    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False

    def training_step(self, batch, batch_idx):
        opt = self.optimizers()
        x, y = batch
        self.manual_backward(torch.nn.functional.mse_loss(self.net(x), y))
        self.clip_gradients(opt, gradient_clip_val=1.0, gradient_clip_algorithm="norm")
        opt.zero_grad(set_to_none=False)  # <- manual-zero
        opt.step()


class SteppingTwice(Regressor):
    """Automatic optimization with an ``optimizer_step`` override that steps twice."""

    def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure=None) -> None:
        optimizer.step(closure=optimizer_closure)
        optimizer.step()  # <- second-step


class ClippingInTrainingStep(Regressor):
    """Automatic optimization with a clip in ``training_step``: Lightning runs the backward
    after the method returns, so the clip sees the last update's gradients (or none)."""

    def training_step(self, batch, batch_idx):
        torch.nn.utils.clip_grad_norm_(self.parameters(), 1.0)  # <- clip-in-training-step
        return super().training_step(batch, batch_idx)


def fit(module: Regressor, clip: float | None) -> list[torch.Tensor]:
    torch.manual_seed(1)
    data = torch.utils.data.TensorDataset(torch.randn(64, 8), torch.randn(64, 1) * 10)
    trainer = lightning.Trainer(max_steps=6, gradient_clip_val=clip, accelerator="cpu", devices=1,
                                logger=False, enable_checkpointing=False, enable_progress_bar=False,
                                enable_model_summary=False)
    trainer.fit(module, torch.utils.data.DataLoader(data, batch_size=8))
    return [p.detach().clone() for p in module.parameters()]


def guarded_fit(module: Regressor, clip: float | None) -> list[torch.Tensor]:
    rt.install(max_norm=1.0, check_every=1)
    try:
        weights = fit(module, clip)
    except BaseException:
        rt.uninstall(check=False)
        raise
    assert rt.uninstall(check=True) > 1
    return weights


def test_clipping_by_the_trainer_is_silent_and_bit_identical() -> None:
    guarded = guarded_fit(Regressor(), clip=1.0)
    plain = fit(Regressor(), clip=1.0)
    assert all(torch.equal(a, b) for a, b in zip(guarded, plain, strict=True))


def test_a_zero_grad_in_a_hook_is_reported_at_the_hook() -> None:
    with pytest.raises(rt.ZeroGradBeforeStepError) as caught:
        guarded_fit(Regressor(zero_in_hook=True), clip=1.0)
    assert caught.value.location == marked_line(Path(__file__), "hook-zero")


def test_a_step_lightning_runs_is_reported_at_the_training_step() -> None:
    with pytest.raises(rt.MissingClipError) as caught:
        guarded_fit(Regressor(), clip=None)
    assert caught.value.location == marked_line(Path(__file__), "training_step")


def test_manual_optimization_names_the_users_own_calls() -> None:
    # The zero runs through Lightning's optimizer wrapper, which inherits torch's zero_grad.
    with pytest.raises(rt.ZeroGradBeforeStepError) as caught:
        guarded_fit(ManualRegressor(), clip=None)
    assert caught.value.location == marked_line(Path(__file__), "manual-zero")


def test_an_overridden_optimizer_step_is_named_itself() -> None:
    with pytest.raises(rt.GradientOrderError) as caught:
        guarded_fit(SteppingTwice(), clip=1.0)
    assert caught.value.location == marked_line(Path(__file__), "second-step")


def test_a_clip_in_training_step_is_clip_before_backward() -> None:
    """As the static pass (CC101) names it: the clip spoils the update whose backward follows
    it, not the previous one."""
    with pytest.raises(rt.ClipBeforeBackwardError) as caught:
        guarded_fit(ClippingInTrainingStep(), clip=None)
    assert caught.value.location == marked_line(Path(__file__), "clip-in-training-step")
