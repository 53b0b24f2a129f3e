"""The one training loop of every recipe (`training/loop.py`): the step plan, the sharding of batches, the settings
check that starts a run, what a run records, and a resumed run doing exactly what the uninterrupted one did."""

from types import SimpleNamespace

import pytest
import torch

from tinypipe.errors import ConfigError
from tinypipe.training import loop
from tinypipe.training.resume import RunCheckpoints, resume_run

SETTINGS = dict(data="x", train_batch_size=2, gradient_accumulation_steps=2, num_train_epochs=3, max_train_steps=None,
                learning_rate=0.05, scale_lr=False, lr_schedule="constant", warmup_steps=0, lr_num_cycles=1, lr_power=1.0,
                use_8bit_adam=False, adam_beta1=0.9, adam_beta2=0.999, adam_weight_decay=0.0, adam_epsilon=1e-8,
                max_grad_norm=1.0, mixed_precision="no", seed=0, output_dir=None, resume_from_checkpoint=None)


@pytest.mark.parametrize("examples, processes, accumulation, expected", [
    (10, 1, 1, (5, 5, 15)), (10, 2, 1, (3, 3, 9)), (10, 1, 2, (5, 3, 9)), (1, 4, 3, (1, 1, 3))])
def test_plan_steps_counts_batches_per_process_and_optimizer_steps(examples, processes, accumulation, expected):
    plan = loop.plan_steps(examples, train_batch_size=2, num_processes=processes, gradient_accumulation_steps=accumulation,
                           num_train_epochs=3, max_train_steps=None)
    assert (plan.batches_per_epoch, plan.updates_per_epoch, plan.total_steps) == expected
    assert loop.plan_steps(examples, train_batch_size=2, num_processes=processes, gradient_accumulation_steps=accumulation,
                           num_train_epochs=3, max_train_steps=4).total_steps == 4


def test_every_process_gets_the_same_number_of_batches_and_together_all_of_them():
    batches = [[0, 1], [2, 3], [4, 5], [6]]
    shares = [loop.shard_batches(batches, SimpleNamespace(num_processes=3, process_index=rank)) for rank in range(3)]
    assert [len(share) for share in shares] == [2, 2, 2]
    assert shares[0] == [[0, 1], [6]] and shares[1] == [[2, 3], [0, 1]]  # the list wraps around to fill the last round
    assert loop.shard_batches(batches, SimpleNamespace(num_processes=1, process_index=0)) == batches


def test_start_run_refuses_a_missing_data_and_a_resume_without_output_dir_before_any_work():
    with pytest.raises(ConfigError, match=r"MyTrainer.train\(\) needs data: a folder"):
        loop.start_run({**SETTINGS, "data": None}, "MyTrainer.train()", data_forms="a folder")
    with pytest.raises(ConfigError, match="resume_from_checkpoint needs output_dir"):
        loop.start_run({**SETTINGS, "resume_from_checkpoint": "latest"}, "MyTrainer.train()", data_forms="a folder")
    with pytest.raises(ConfigError, match="learning_rate must be a number > 0"):
        loop.start_run({**SETTINGS, "learning_rate": 0}, "MyTrainer.train()", data_forms="a folder")


def test_a_run_records_the_epoch_count_by_one_name_and_the_optimizer_that_runs():
    arguments = {**SETTINGS, "epoch": 5, "data": [1, 2], "use_8bit_adam": True}
    loop.record_effective_arguments(arguments, base_model="base", rank=4)
    assert (arguments["num_train_epochs"], arguments["epoch"], arguments["data"], arguments["base_model"], arguments["rank"]) == \
        (5, None, None, "base", 4)
    assert arguments["use_8bit_adam"] is (torch.cuda.is_available() and arguments["use_8bit_adam"])  # AdamW without CUDA


def test_the_cadences_of_checkpoints_and_end_of_epoch_work():
    accelerator = SimpleNamespace(is_main_process=True)
    checkpoints = RunCheckpoints(output=None, checkpointing_steps=2, total_limit=None, run={}, trainable={}, settings="")
    assert not loop.checkpoint_due(checkpoints, 2, accelerator)  # no output_dir: no checkpoints
    checkpoints.output = "out"
    assert [step for step in range(1, 7) if loop.checkpoint_due(checkpoints, step, accelerator)] == [2, 4, 6]
    assert [epoch for epoch in range(5) if loop.end_of_epoch_due(epoch, 2, is_last=epoch == 4)] == [1, 3, 4]


def train(output, *, max_train_steps=None, resume_from_checkpoint=None, checkpointing_steps=2):
    """A tiny regression trained by `run_epochs`; returns its weight, the epochs it ended and their losses."""
    settings = {**SETTINGS, "output_dir": str(output), "max_train_steps": max_train_steps,
                "resume_from_checkpoint": resume_from_checkpoint}
    accelerator = loop.start_run(settings, "Test", data_forms="")
    inputs = torch.linspace(-1, 1, 5)[:, None]
    targets = 3 * inputs
    model = torch.nn.Linear(1, 1, bias=False)
    torch.nn.init.zeros_(model.weight)
    setup = loop.set_up_training(accelerator, settings, example_count=len(inputs), models=[model],
                                 parameters=list(model.parameters()), use_8bit_adam=False, description="Test")
    checkpoints = RunCheckpoints(output, checkpointing_steps, None, {"test": 1}, dict(model.named_parameters()), "the weight")
    resumed = resume_run(checkpoints, resume_from_checkpoint, setup)
    ended = []

    def epoch_batches(epoch_index):
        order = torch.randperm(len(inputs), generator=torch.Generator().manual_seed(epoch_index)).tolist()
        return loop.shard_batches([order[start:start + 2] for start in range(0, len(order), 2)], accelerator)

    def batch_loss(batch):
        loss = ((setup.models[0](inputs[batch]) - targets[batch]) ** 2).mean()
        return loss, loss

    steps = loop.run_epochs(accelerator, setup, settings, checkpoints=checkpoints, resumed=resumed, epoch_batches=epoch_batches,
                            batch_loss=batch_loss, end_of_epoch=lambda epoch: ended.append(epoch))
    return steps, model.weight.item(), ended


def test_a_resumed_run_ends_exactly_as_the_uninterrupted_one(tmp_path):
    steps, straight, ended = train(tmp_path / "straight")
    assert steps == 6 and [epoch.index for epoch in ended] == [0, 1, 2] and ended[-1].is_last
    assert [len(epoch.losses) for epoch in ended] == [3, 3, 3] and [epoch.global_step for epoch in ended] == [2, 4, 6]
    # Interrupted after its checkpoint at step 4 (a run of 4 steps writes the same checkpoints), then resumed.
    assert train(tmp_path / "resumed", max_train_steps=4)[0] == 4
    steps, resumed, ended = train(tmp_path / "resumed", resume_from_checkpoint="checkpoint-4")
    assert steps == 6 and resumed == straight
    assert [epoch.index for epoch in ended] == [1, 2]  # the checkpoint's epoch does its end-of-epoch work again
    assert len(ended[0].losses) == 3  # with the losses of the batches before the checkpoint
