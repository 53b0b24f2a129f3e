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
