"""A run you can see (`training/tracking.py`): metrics.jsonl always, TensorBoard / W&B through accelerate when asked."""

import importlib.util
import json
import shutil
from types import SimpleNamespace

import pytest
from PIL import Image

from tinypipe import AutoTrainerPipeline
from tinypipe.config.filelist import verify_filelist
from tinypipe.errors import ConfigError
from tinypipe.trainers import LoRATrainer
from tinypipe.training import tracking
from tinypipe.training.tracking import RunMetrics, read_metrics

RUN = dict(data="tinypipe/shapes", instance_prompt="a photo of sks circle", max_train_steps=3, checkpointing_steps=2,
           learning_rate=1e-3, num_validation_images=1, validation_inference_steps=1, use_8bit_adam=False)


def has(package: str) -> bool:
    return importlib.util.find_spec(package) is not None


needs_tensorboard = pytest.mark.skipif(not has("tensorboard"), reason="tensorboard is not installed (pip install 'tinypipe[tensorboard]')")
needs_wandb = pytest.mark.skipif(not has("wandb"), reason="wandb is not installed (pip install 'tinypipe[wandb]')")


@pytest.fixture(scope="module")
def tensorboard_run(tmp_path_factory):
    if not has("tensorboard"):
        pytest.skip("tensorboard is not installed (pip install 'tinypipe[tensorboard]')")
    output = tmp_path_factory.mktemp("tensorboard") / "out"
    LoRATrainer().train(**RUN, report_to="tensorboard", output_dir=str(output))
    return output


@needs_tensorboard
def test_metrics_jsonl_has_one_record_per_optimizer_step_and_the_repo_lists_it_with_the_loss_curve(tensorboard_run):
    records = read_metrics(tensorboard_run / "metrics.jsonl")
    assert [record["step"] for record in records] == [1, 2, 3]
    for record in records:
        assert {"step", "loss", "lr", "epoch", "elapsed", "grad_norm"} <= record.keys()
        assert record["lr"] == 1e-3 and record["epoch"] == 0 and record["loss"] > 0 and record["grad_norm"] > 0
    assert [record["elapsed"] for record in records] == sorted(record["elapsed"] for record in records)
    trainer_folder = tensorboard_run / "trainer"
    listed = (trainer_folder / "filelist.txt").read_text().split()
    assert "metrics.jsonl" in listed and "loss.png" in listed
    verify_filelist(trainer_folder, use_stamps=False)
    assert read_metrics(trainer_folder / "metrics.jsonl") == records
    assert Image.open(trainer_folder / "loss.png").size == (640, 400)
    assert AutoTrainerPipeline.from_pretrained(tensorboard_run).train_config.report_to == "tensorboard"  # recorded, reloads


@needs_tensorboard
def test_the_model_card_readme_shows_the_loss_curve_and_the_labelled_before_after(tensorboard_run):
    card = (tensorboard_run / "README.md").read_text()
    assert "![Training loss per optimizer step](trainer/loss.png)" in card and "![](validation/before_after.png)" in card
    assert str(tensorboard_run) not in card  # no local paths


@needs_tensorboard
def test_tensorboard_event_files_hold_loss_learning_rate_grad_norm_and_validation_images(tensorboard_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tensorboard_run / "logs" / tracking.TRACKER_PROJECT), size_guidance={"images": 0})
    events.Reload()
    expected = [record["loss"] for record in read_metrics(tensorboard_run / "metrics.jsonl")]
    assert [event.step for event in events.Scalars("train/loss")] == [1, 2, 3]
    assert [event.value for event in events.Scalars("train/loss")] == pytest.approx(expected)
    assert {"train/learning_rate", "train/grad_norm"} <= set(events.Tags()["scalars"])
    assert {"validation/prompt-0", "validation/before_after"} <= set(events.Tags()["images"])
    hparams = list((tensorboard_run / "logs" / tracking.TRACKER_PROJECT).glob("*/hparams.yml"))
    assert hparams and "max_train_steps: 3" in hparams[0].read_text()  # the resolved config


@needs_tensorboard
def test_a_resumed_run_appends_to_metrics_jsonl_and_never_repeats_a_step(tensorboard_run, tmp_path):
    output = tmp_path / "out"
    shutil.copytree(tensorboard_run, output)
    before = read_metrics(output / "metrics.jsonl")
    LoRATrainer().train(**RUN, report_to="tensorboard", output_dir=str(output), resume_from_checkpoint="latest")
    after = read_metrics(output / "metrics.jsonl")
    assert [record["step"] for record in after] == [1, 2, 3]  # resumed from checkpoint-2: step 3 again, once
    assert after[:2] == before[:2]  # the steps before the checkpoint are kept as they were
    assert after[2]["elapsed"] >= after[1]["elapsed"]


@needs_wandb
def test_wandb_offline_run_writes_its_run_files_with_the_loss_and_images(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    output = tmp_path / "out"
    LoRATrainer().train(**{**RUN, "max_train_steps": 2, "checkpointing_steps": None}, report_to="wandb", output_dir=str(output))
    runs = list((output / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    log = next(runs[0].glob("run-*.wandb")).read_bytes()
    assert b"train/loss" in log and b"train/grad_norm" in log and b"max_train_steps" in log
    assert list((runs[0] / "files" / "media" / "images").rglob("*.png"))  # the validation images


def test_report_to_with_its_package_missing_is_refused_before_any_heavy_work_with_the_pip_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(tracking.importlib.util, "find_spec", lambda name, *args: None if name == "wandb" else real(name, *args))
    with pytest.raises(ConfigError, match=r"report_to='wandb' needs the wandb package.*pip install 'tinypipe\[wandb\]'"):
        LoRATrainer().train(data="/no/such/folder", report_to="wandb")  # refused before the data is read
    with pytest.raises(ConfigError, match="report_to 'mlflow' is not known"):
        LoRATrainer().train(data="/no/such/folder", report_to="mlflow")


@needs_tensorboard
def test_report_to_tensorboard_without_an_output_dir_is_refused():
    with pytest.raises(ConfigError, match="report_to='tensorboard' writes its event files below output_dir"):
        LoRATrainer().train(data="/no/such/folder", report_to="tensorboard")


def test_metrics_of_a_resumed_run_keep_the_steps_up_to_its_checkpoint_and_drop_a_half_written_line(tmp_path):
    accelerator = SimpleNamespace(is_main_process=True, trackers=[])
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": step, "loss": 1.0, "elapsed": 10.0 * step}) + "\n" for step in (1, 2, 3))
                    + '{"step": 4, "lo')
    metrics = RunMetrics(accelerator, {"report_to": "none"}, tmp_path, resumed_step=2)
    metrics.log_step(3, loss=0.5, learning_rate=1e-4, epoch=0, grad_norm=None)
    records = read_metrics(path)
    assert [record["step"] for record in records] == [1, 2, 3]
    assert records[2]["loss"] == 0.5 and "grad_norm" not in records[2] and records[2]["elapsed"] >= 20.0
    RunMetrics(accelerator, {"report_to": "none"}, tmp_path, resumed_step=None)
    assert read_metrics(path) == []  # a fresh run into the same folder starts the file anew
