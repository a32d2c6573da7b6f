"""The runtime twin of CC107 foreign-gradients: an optimizer whose gradients hold two backwards'
contributions, with another optimizer's step between them and no zeroing of its own, raises at
its step and names both backwards; the correct ways of training two networks (or two parameter
groups) run silent and bit for bit like unguarded runs."""

from __future__ import annotations

from collections.abc import Callable
from itertools import pairwise
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from conftest import marked_line  # noqa: E402

import clipcheck.runtime as rt  # noqa: E402

F = torch.nn.functional


def line_of(marker: str) -> str:
    return marked_line(Path(__file__), marker)


def mlp(*sizes: int) -> torch.nn.Sequential:
    layers: list[torch.nn.Module] = []
    for n_in, n_out in pairwise(sizes):
        layers += [torch.nn.Linear(n_in, n_out), torch.nn.Tanh()]
    return torch.nn.Sequential(*layers[:-1])


class Gan:
    """A generator, a discriminator, an Adam for each, and a batch of noise and of real data."""

    def __init__(self) -> None:
        torch.manual_seed(0)
        self.G, self.D = mlp(4, 8, 2), mlp(2, 8, 1)
        self.opt_g = torch.optim.Adam(self.G.parameters(), lr=1e-2)
        self.opt_d = torch.optim.Adam(self.D.parameters(), lr=1e-2)
        self.z, self.real = torch.randn(16, 4), torch.randn(16, 2) + 3

    def d_loss(self, fake: torch.Tensor) -> torch.Tensor:
        return F.softplus(self.D(fake.detach())).mean() + F.softplus(-self.D(self.real)).mean()

    def weights(self) -> list[torch.Tensor]:
        return [p.detach().clone() for p in [*self.G.parameters(), *self.D.parameters()]]


# -- the mistake ----------------------------------------------------------------------------------

def discriminator_zeroed_after_its_step(gan: Gan, steps: int = 3) -> None:
    """The generator's loss flows through the unfrozen discriminator, which is zeroed only
    after its own step: its step applies the generator loss's gradients too."""
    for _ in range(steps):
        gan.opt_g.zero_grad()
        fake = gan.G(gan.z)
        F.softplus(-gan.D(fake)).mean().backward()  # <- generator-backward
        gan.opt_g.step()
        gan.d_loss(fake).backward()  # <- discriminator-backward
        gan.opt_d.step()  # <- discriminator-step
        gan.opt_d.zero_grad()


def test_gan_raises_at_the_discriminators_step_naming_both_backwards() -> None:
    gan = Gan()
    with pytest.raises(rt.ForeignGradientsError) as caught, rt.guard(gan.opt_g), rt.guard(gan.opt_d):
        discriminator_zeroed_after_its_step(gan)
    error = caught.value
    assert isinstance(error, rt.GradientOrderError)
    assert str(error).startswith(f"[foreign-gradients] step 1 at {line_of('discriminator-backward')}:")
    assert f"(at {line_of('generator-backward')})" in str(error)
    here = [entry for entry in caught.traceback if Path(entry.path) == Path(__file__)]
    assert f"{here[-1].path}:{here[-1].lineno + 1}" == line_of("discriminator-step")


# -- correct loops: silent and bit-identical ----------------------------------------------------

def discriminator_zeroed_before_its_backward(gan: Gan, steps: int = 4) -> None:
    for _ in range(steps):
        gan.opt_g.zero_grad()
        fake = gan.G(gan.z)
        F.softplus(-gan.D(fake)).mean().backward()
        gan.opt_g.step()
        gan.opt_d.zero_grad()
        gan.d_loss(fake).backward()
        gan.opt_d.step()


def discriminator_zeroed_by_hand(gan: Gan, steps: int = 4) -> None:
    """The discriminator's gradients set to ``None`` by hand right before its own backward, as
    PyTorch's performance guide once advised: a zero-grad the guard does not see called, but
    the gradients the generator's loss left are gone all the same."""
    for _ in range(steps):
        gan.opt_g.zero_grad()
        fake = gan.G(gan.z)
        F.softplus(-gan.D(fake)).mean().backward()
        gan.opt_g.step()
        for p in gan.D.parameters():
            p.grad = None
        gan.d_loss(fake).backward()
        gan.opt_d.step()


def discriminator_frozen_for_the_generator(gan: Gan, steps: int = 4) -> None:
    """Zeroed only after its own step, as in the mistake, but frozen while the generator's loss
    runs backward: nothing of that loss reaches it."""
    for _ in range(steps):
        gan.opt_g.zero_grad()
        fake = gan.G(gan.z)
        gan.D.requires_grad_(False)
        F.softplus(-gan.D(fake)).mean().backward()
        gan.D.requires_grad_(True)
        gan.opt_g.step()
        gan.d_loss(fake).backward()
        gan.opt_d.step()
        gan.opt_d.zero_grad()


def joint_objective(gan: Gan, steps: int = 4) -> None:
    """An encoder (``D`` here, from 2 to 1) and a decoder (``G`` from 1 to 2, through a
    projection) trained on a joint loss, the decoder then on one more loss that runs through
    the encoder too: one objective in two backwards (BicycleGAN), as the static CC107 reads it."""
    decoder = torch.nn.Sequential(torch.nn.Linear(1, 4), gan.G)
    for _ in range(steps):
        gan.opt_d.zero_grad()
        gan.opt_g.zero_grad()
        code = gan.D(gan.real)
        (F.mse_loss(decoder(code), gan.real) + 0.01 * code.square().mean()).backward()
        gan.opt_d.step()
        F.mse_loss(gan.D(decoder(gan.z[:, :1])), gan.z[:, :1]).backward()
        gan.opt_g.step()


def train_two_groups(guarded: bool, accumulation: int) -> list[torch.Tensor]:
    """One loss over one model whose parameters two optimizers share out, as LLM trainers do
    with Muon for the matrices and AdamW for the rest; ``accumulation`` micro-batches a step."""
    torch.manual_seed(0)
    model = mlp(4, 16, 16, 1)
    matrices = [p for p in model.parameters() if p.ndim == 2]
    others = [p for p in model.parameters() if p.ndim != 2]
    opts = [torch.optim.SGD(matrices, lr=1e-2, momentum=0.9), torch.optim.AdamW(others, lr=1e-2)]
    x, y = torch.randn(32, 4), torch.randn(32, 1)
    guards = [rt.guard(opt, check_every=1) for opt in opts] if guarded else []
    for i in range(4 * accumulation):
        (F.mse_loss(model(x[i % 4::4]), y[i % 4::4]) / accumulation).backward()
        if (i + 1) % accumulation == 0:
            for opt in opts:
                opt.step()
            for opt in opts:
                opt.zero_grad()
    for guard in guards:
        guard.close()
    return [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("accumulation", [1, 4])
def test_one_loss_over_two_optimizers_is_silent_and_bit_identical(accumulation: int) -> None:
    guarded = train_two_groups(True, accumulation)
    plain = train_two_groups(False, accumulation)
    assert all(torch.equal(a, b) for a, b in zip(guarded, plain, strict=True))


def train_gan(loop: Callable[[Gan], None], guarded: bool) -> list[torch.Tensor]:
    gan = Gan()
    if guarded:
        with rt.guard(gan.opt_g, check_every=1), rt.guard(gan.opt_d, check_every=1):
            loop(gan)
    else:
        loop(gan)
    return gan.weights()


@pytest.mark.parametrize("loop", [discriminator_zeroed_before_its_backward, discriminator_zeroed_by_hand,
                                  discriminator_frozen_for_the_generator, joint_objective],
                         ids=lambda loop: loop.__name__)
def test_correct_two_network_loops_are_silent_and_bit_identical(loop: Callable[[Gan], None]) -> None:
    guarded, plain = train_gan(loop, True), train_gan(loop, False)
    assert all(torch.equal(a, b) for a, b in zip(guarded, plain, strict=True))


def test_the_first_step_install_sees_is_enough() -> None:
    """Under ``install()`` each guard starts at its optimizer's first step: the mistake is
    caught on the next iteration, both backwards named."""
    gan = Gan()
    rt.install(check_every=1)
    try:
        with pytest.raises(rt.ForeignGradientsError) as caught:
            discriminator_zeroed_after_its_step(gan)
    finally:
        rt.uninstall(check=False)
    assert caught.value.step == 2  # the discriminator's second step: its guard started at the first
    assert caught.value.location == line_of("discriminator-backward")
    assert f"(at {line_of('generator-backward')})" in str(caught.value)
