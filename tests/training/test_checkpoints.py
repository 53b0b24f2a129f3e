import logging
import pickle
import random
import re

import numpy as np
import pytest
import torch
from diffusers.optimization import get_scheduler

from tinypipe import files
from tinypipe.errors import RepoError
from tinypipe.training import checkpoints
from tinypipe.training.checkpoints import (
    latest_checkpoint,
    load_checkpoint,
    resolve_checkpoint,
    save_checkpoint,
)

TOTAL_STEPS = 6


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)


def _build(**optimizer_kwargs):
    """A fresh tiny run: model, AdamW, cosine schedule and a named noise generator (all from the global RNG)."""
    model = torch.nn.Linear(4, 3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, **optimizer_kwargs)
    lr_scheduler = get_scheduler("cosine", optimizer, num_warmup_steps=2, num_training_steps=TOTAL_STEPS)
    generator = torch.Generator().manual_seed(1234)
    return model, optimizer, lr_scheduler, generator


def _train(model, optimizer, lr_scheduler, generator, steps: int) -> None:
    """Steps whose data come from the named generator and the global torch, Python and NumPy RNGs."""
    for _ in range(steps):
        inputs = torch.randn(8, 4, generator=generator)
        target = torch.randn(8, 3) * random.random() + float(np.random.rand())
        loss = ((model(inputs) - target) ** 2).mean()
        loss.backward()
        optimizer.step()
        lr_scheduler.step()
        optimizer.zero_grad()


def _save(output_dir, step, model, optimizer, lr_scheduler, generator, **kwargs):
    trainable = {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}
    return save_checkpoint(output_dir, step, trainable=trainable, optimizer=optimizer, lr_scheduler=lr_scheduler,
                           generators={"noise": generator}, **kwargs)


def _assert_same(left, right):
    """Exactly equal nested states: same python types, tensors bit-identical with the same dtype."""
    assert type(left) is type(right)
    if isinstance(left, torch.Tensor):
        assert left.dtype == right.dtype and torch.equal(left, right)
    elif isinstance(left, dict):
        assert left.keys() == right.keys()
        for key in left:
            _assert_same(left[key], right[key])
    elif isinstance(left, (list, tuple)):
        assert len(left) == len(right)
        for a, b in zip(left, right):
            _assert_same(a, b)
    else:
        assert left == right


@pytest.mark.parametrize("optimizer_kwargs", [{}, {"foreach": True}, {"fused": True}],
                         ids=["default", "foreach", "fused"])
def test_resume_is_bit_identical_to_straight_run(tmp_path, optimizer_kwargs):
    _seed_everything(0)
    straight = _build(**optimizer_kwargs)
    _train(*straight, TOTAL_STEPS)

    _seed_everything(0)
    first_half = _build(**optimizer_kwargs)
    _train(*first_half, TOTAL_STEPS // 2)
    _save(tmp_path, TOTAL_STEPS // 2, *first_half, state={"epoch": 0, "step_in_epoch": 3})

    _seed_everything(999)  # a new process: other initial weights, other RNG states
    model, optimizer, lr_scheduler, generator = _build(**optimizer_kwargs)
    checkpoint = load_checkpoint(resolve_checkpoint(tmp_path, "latest"), optimizer=optimizer,
                                 lr_scheduler=lr_scheduler, generators={"noise": generator})
    model.load_state_dict(checkpoint.trainable)
    assert checkpoint.step == 3 and checkpoint.state == {"epoch": 0, "step_in_epoch": 3}
    _train(model, optimizer, lr_scheduler, generator, TOTAL_STEPS - checkpoint.step)

    straight_model, straight_optimizer, straight_scheduler, _ = straight
    _assert_same(dict(model.state_dict()), dict(straight_model.state_dict()))
    _assert_same(optimizer.state_dict(), straight_optimizer.state_dict())
    _assert_same(lr_scheduler.state_dict(), straight_scheduler.state_dict())
    assert lr_scheduler.get_last_lr() == straight_scheduler.get_last_lr()


class _QuantizedStateOptimizer(torch.optim.Optimizer):
    """Keeps state the way bitsandbytes' 8-bit optimizers do: int8/uint8 tensors, a python int step, tuples.

    It records the state dict it is given: torch's own `load_state_dict` then casts every state tensor
    to the parameter's dtype (bitsandbytes overrides it not to), so what we check is what it receives.
    """

    def __init__(self, params):
        super().__init__(params, {"lr": 0.1, "betas": (0.9, 0.99), "optim_bits": 8})
        self.qmap = torch.arange(256, dtype=torch.uint8)  # shared by every parameter's state, as in bitsandbytes
        self.loaded_state_dict = None

    def load_state_dict(self, state_dict):
        self.loaded_state_dict = state_dict
        super().load_state_dict(state_dict)

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            for param in group["params"]:
                state = self.state[param]
                state.setdefault("step", 0)
                state["step"] += 1
                state["state1"] = (param.grad * 100).clamp(-127, 127).to(torch.int8)
                state["qmap1"] = self.qmap
                state["absmax1"] = param.grad.abs().amax().reshape(1)
                state["blocks"] = (state["step"], 2.5)


def test_arbitrary_optimizer_state_round_trips_exactly(tmp_path):
    model = torch.nn.Linear(4, 3)
    optimizer = _QuantizedStateOptimizer(model.parameters())
    model(torch.randn(2, 4)).sum().backward()
    optimizer.step()
    save_checkpoint(tmp_path, 1, trainable={}, optimizer=optimizer, lr_scheduler=None)

    fresh = _QuantizedStateOptimizer(torch.nn.Linear(4, 3).parameters())
    load_checkpoint(latest_checkpoint(tmp_path), optimizer=fresh, lr_scheduler=None)
    _assert_same(fresh.loaded_state_dict, optimizer.state_dict())


def test_checkpoint_holds_only_safetensors_and_json(tmp_path, monkeypatch):
    def no_pickle(*args, **kwargs):
        raise AssertionError("a checkpoint must never pickle")

    for module, name in [(torch, "save"), (torch, "load"), (pickle, "dump"), (pickle, "dumps"), (pickle, "load")]:
        monkeypatch.setattr(module, name, no_pickle)
    run = _build()
    _train(*run, 1)
    path = _save(tmp_path, 1, *run)
    load_checkpoint(path, optimizer=run[1], lr_scheduler=run[2], generators={"noise": run[3]})

    assert path == tmp_path / "checkpoints" / "checkpoint-1"
    assert sorted(file.name for file in path.iterdir()) == [
        "checkpoint.json", "complete.json", "optimizer.safetensors", "rng_state.safetensors", "trainable.safetensors"]
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["checkpoint-1"]


def _die_on_second_weights_file(monkeypatch):
    real_save_file, calls = checkpoints.save_file, []

    def save_file(*args, **kwargs):
        calls.append(args)
        if len(calls) == 2:
            raise KeyboardInterrupt("killed")
        real_save_file(*args, **kwargs)

    monkeypatch.setattr(checkpoints, "save_file", save_file)


def _die_on_marker(monkeypatch):
    real_write_marker = checkpoints.write_marker

    def write_marker(folder, marker, record, **kwargs):
        if marker == "complete.json":
            raise KeyboardInterrupt("killed")
        real_write_marker(folder, marker, record, **kwargs)

    monkeypatch.setattr(checkpoints, "write_marker", write_marker)


def _die_before_rename(monkeypatch):
    real_fsync = files.fsync_path

    def fsync(path):
        if path.name.startswith(".tmp-checkpoint-"):  # the last thing done before the rename
            raise KeyboardInterrupt("killed")
        real_fsync(path)

    monkeypatch.setattr(files, "fsync_path", fsync)


@pytest.mark.parametrize("kill", [_die_on_second_weights_file, _die_on_marker, _die_before_rename])
def test_save_killed_midway_keeps_previous_checkpoint(tmp_path, monkeypatch, kill):
    run = _build()
    _train(*run, 1)
    first = _save(tmp_path, 1, *run)

    with monkeypatch.context() as patch:
        kill(patch)
        patch.setattr(files.shutil, "rmtree", lambda *args, **kwargs: None)  # a kill runs no clean-up
        with pytest.raises(KeyboardInterrupt):
            _save(tmp_path, 2, *run, total_limit=1)
    assert latest_checkpoint(tmp_path) == first
    assert len(list((tmp_path / "checkpoints").glob(".tmp-checkpoint-2-*"))) == 1
    assert resolve_checkpoint(tmp_path, "latest") == first  # the next run resumes from the last complete one...
    assert not list((tmp_path / "checkpoints").glob(".tmp-checkpoint-2-*"))  # ...and removes what the kill left

    third = _save(tmp_path, 3, *run)
    assert latest_checkpoint(tmp_path) == third
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["checkpoint-1", "checkpoint-3"]


def test_total_limit_keeps_newest_and_deletes_only_after_new_one_is_complete(tmp_path, monkeypatch):
    run = _build()
    real_rmtree, deleted = checkpoints.shutil.rmtree, []

    def rmtree(path, **kwargs):
        pruned = re.fullmatch(r"\.tmp-checkpoint-(checkpoint-\d+)-\w+-deleted", path.name)  # renamed aside, then deleted
        if pruned:
            deleted.append(pruned.group(1))
            assert latest_checkpoint(tmp_path) == tmp_path / "checkpoints" / f"checkpoint-{step}"
        real_rmtree(path, **kwargs)

    monkeypatch.setattr(checkpoints.shutil, "rmtree", rmtree)
    for step in range(1, 5):
        _train(*run, 1)
        _save(tmp_path, step, *run, total_limit=2)
    assert deleted == ["checkpoint-1", "checkpoint-2"]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["checkpoint-3", "checkpoint-4"]


def test_saving_a_step_again_replaces_it(tmp_path):
    run = _build()
    _save(tmp_path, 1, *run, state={"attempt": 1})
    path = _save(tmp_path, 1, *run, state={"attempt": 2})
    assert load_checkpoint(path, optimizer=run[1], lr_scheduler=run[2]).state == {"attempt": 2}
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["checkpoint-1"]


def test_resolve_checkpoint(tmp_path, caplog):
    assert resolve_checkpoint(tmp_path, None) is None
    with caplog.at_level(logging.INFO, logger="tinypipe.training.checkpoints"):
        assert resolve_checkpoint(tmp_path, "latest") is None
    assert "no checkpoint found" in caplog.text and "starting from scratch" in caplog.text

    run = _build()
    first = _save(tmp_path, 1, *run)
    second = _save(tmp_path, 2, *run)
    incomplete = tmp_path / "checkpoints" / "checkpoint-9"  # a save interrupted without our temp folder
    incomplete.mkdir()
    (incomplete / "trainable.safetensors").write_bytes(b"")
    assert resolve_checkpoint(tmp_path, "latest") == second
    assert resolve_checkpoint(tmp_path, first) == first
    assert resolve_checkpoint(tmp_path, "checkpoint-1") == first

    with pytest.raises(RepoError, match="checkpoint-7.*does not exist.*'latest'"):
        resolve_checkpoint(tmp_path, tmp_path / "checkpoints" / "checkpoint-7")
    with pytest.raises(RepoError, match="checkpoint-9 is not a complete checkpoint.*complete.json"):
        resolve_checkpoint(tmp_path, incomplete)
    with pytest.raises(RepoError, match="checkpoint-9 is not a complete checkpoint"):
        load_checkpoint(incomplete, optimizer=run[1], lr_scheduler=run[2])


@pytest.mark.parametrize("damage", ["truncate", "flip_bytes"])
def test_corrupt_trainable_file_is_reported_by_name(tmp_path, damage):
    run = _build()
    _train(*run, 1)
    path = _save(tmp_path, 1, *run)
    weights = path / "trainable.safetensors"
    data = bytearray(weights.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    else:
        data[-4:] = bytes(255 - b for b in data[-4:])
    weights.write_bytes(bytes(data))

    with pytest.raises(RepoError, match=r"trainable\.safetensors is (missing or truncated|corrupt)"):
        load_checkpoint(path, optimizer=run[1], lr_scheduler=run[2], generators={"noise": run[3]})


def test_state_that_is_not_json_is_refused_before_writing(tmp_path):
    run = _build()
    with pytest.raises(TypeError, match="state=.... must be JSON-serializable"):
        _save(tmp_path, 1, *run, state={"epoch": torch.tensor(1)})
    assert list((tmp_path / "checkpoints").iterdir()) == []


def test_generator_not_in_checkpoint_is_an_error(tmp_path):
    run = _build()
    path = _save(tmp_path, 1, *run)
    with pytest.raises(RepoError, match=r"no state for generators \['timesteps'\]"):
        load_checkpoint(path, optimizer=run[1], lr_scheduler=run[2], generators={"timesteps": torch.Generator()})
