"""The optimizer and learning-rate schedules every recipe shares (`training/optim.py`)."""

import logging

import pytest
import torch

from tinypipe.training import optim


@pytest.mark.parametrize("schedule", optim.LR_SCHEDULES)
def test_every_lr_schedule(schedule):
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = optim.make_optimizer([parameter], learning_rate=1.0, use_8bit_adam=False)
    scheduler = optim.make_lr_scheduler(optimizer, lr_schedule=schedule, warmup_steps=2, total_steps=10)
    rates = []
    for _ in range(10):
        rates.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    assert max(rates) <= 1.0 and (schedule == "constant" or rates[0] < 1.0 or rates[-1] < 1.0)


@pytest.mark.parametrize("schedule", optim.LR_SCHEDULES)
@pytest.mark.parametrize("num_cycles, power", [(1, 1.0), (3, 2.0)])
def test_every_lr_schedule_is_step_for_step_the_one_diffusers_training_scripts_use(schedule, num_cycles, power):
    from diffusers.optimization import get_scheduler

    def rates(make) -> list[float]:
        optimizer = optim.make_optimizer([torch.nn.Parameter(torch.zeros(1))], learning_rate=0.1, use_8bit_adam=False)
        scheduler, seen = make(optimizer), []
        for _ in range(40):
            seen.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            scheduler.step()
        return seen

    ours = rates(lambda optimizer: optim.make_lr_scheduler(optimizer, lr_schedule=schedule, warmup_steps=4, total_steps=30,
                                                           num_cycles=num_cycles, power=power))
    assert ours == rates(lambda optimizer: get_scheduler(schedule, optimizer, num_warmup_steps=4, num_training_steps=30,
                                                         num_cycles=num_cycles, power=power))


def test_8bit_adam_falls_back_to_adamw_and_says_so_once(caplog, monkeypatch):
    monkeypatch.setattr(optim, "_warned_8bit_fallback", False)
    parameter = torch.nn.Parameter(torch.zeros(1))
    with caplog.at_level(logging.WARNING):
        first = optim.make_optimizer([parameter], learning_rate=1.0, use_8bit_adam=True)
        optim.make_optimizer([parameter], learning_rate=1.0, use_8bit_adam=True)
    assert type(first) is torch.optim.AdamW
    assert [r.message for r in caplog.records].count(
        "use_8bit_adam=True, but bitsandbytes' 8-bit Adam needs a CUDA GPU and `pip install bitsandbytes`; "
        "falling back to torch.optim.AdamW.") == 1
