"""Pieces of the diffusion recipes (`training/diffusion_steps.py`): an epoch's order and batches, and the validation."""

from types import SimpleNamespace

from tinypipe.training import diffusion_steps as steps
from tinypipe.training.loop import EpochEnd, shard_batches


def test_an_epochs_order_is_a_pure_function_of_the_seed_and_the_epoch():
    assert steps.epoch_order(7, seed=3, epoch=2) == steps.epoch_order(7, seed=3, epoch=2)
    assert sorted(steps.epoch_order(7, seed=3, epoch=2)) == list(range(7))
    assert steps.epoch_order(7, seed=3, epoch=2) != steps.epoch_order(7, seed=3, epoch=3)


def test_every_batch_is_full_and_the_processes_share_them_evenly():
    order = [4, 0, 3, 1, 2]
    assert steps.full_batches(order, 2, 1) == [[4, 0], [3, 1], [2, 4]]  # the order wraps around to fill the last one
    shares = [shard_batches(steps.full_batches(order, 2, 2), SimpleNamespace(num_processes=2, process_index=rank))
              for rank in range(2)]
    assert shares == [[[4, 0], [2, 4]], [[3, 1], [0, 3]]]  # each global batch of 2 x 2 split by rank


def test_validation_images_are_saved_every_few_epochs_and_at_the_end(tmp_path, monkeypatch):
    saved = []
    monkeypatch.setattr(steps, "validation_images", lambda pipeline, prompt, count, *args: [prompt] * count)
    monkeypatch.setattr(steps, "save_images", lambda images, folder, rows=1: saved.append((images, folder.name)))
    settings = dict(validation_prompt=None, num_validation_images=2, seed=0, validation_inference_steps=1,
                    validation_guidance_scale=1.0, validation_epochs=2)
    validation = steps.Validation.of(settings, default_prompt="a photo of sks circle")
    end_of_epoch = validation.at_epoch_end(None, SimpleNamespace(is_main_process=True, trackers=[]), tmp_path)
    for index in range(3):
        end_of_epoch(EpochEnd(index, index + 1, index == 2, []))
    assert saved == [(["a photo of sks circle"] * 2, "epoch-0002"), (["a photo of sks circle"] * 2, "epoch-0003")]
    end_of_epoch_elsewhere = validation.at_epoch_end(None, SimpleNamespace(is_main_process=False, trackers=[]), tmp_path)
    end_of_epoch_elsewhere(EpochEnd(1, 2, False, []))
    assert len(saved) == 2  # only the main process validates


VALIDATION = dict(validation_prompt=None, validation_prompts=None, num_validation_images=2, seed=0,
                  validation_inference_steps=1, validation_guidance_scale=1.0, validation_epochs=1)


def test_several_validation_prompts_each_get_their_images_after_the_single_prompt(tmp_path, monkeypatch):
    monkeypatch.setattr(steps, "validation_images", lambda pipeline, prompt, count, *args: [prompt] * count)
    validation = steps.Validation.of({**VALIDATION, "validation_prompt": "one", "validation_prompts": ["two", "one", "three"]},
                                     default_prompt="unused")
    assert validation.prompts == ("one", "two", "three")
    assert validation.by_prompt(validation.images(None)) == [["one"] * 2, ["two"] * 2, ["three"] * 2]
    assert steps.Validation.of({**VALIDATION, "validation_prompt": "only"}, default_prompt="unused").prompts == ("only",)
    assert steps.Validation.of(VALIDATION, default_prompt="the default").prompts == ("the default",)


def test_before_after_is_labelled_and_holds_each_prompts_base_and_fine_tuned_images(tmp_path):
    from PIL import Image
    import numpy as np

    size = (16, 16)
    colours = {(0, 0): "red", (0, 1): "green", (1, 0): "blue", (1, 1): "yellow"}  # (prompt, row) -> colour
    before = [[Image.new("RGB", size, colours[prompt, 0])] * 2 for prompt in range(2)]
    after = [[Image.new("RGB", size, colours[prompt, 1])] * 2 for prompt in range(2)]
    path = tmp_path / "before_after.png"
    steps.save_before_after(before, after, path, prompts=["a photo of sks circle", "a red square"], step=7)
    grid = Image.open(path).convert("RGB")
    for (prompt, row), colour in colours.items():
        for column in range(2):
            cell = grid.crop(steps.before_after_box(prompt, row, column, size))
            assert np.array_equal(np.asarray(cell), np.asarray(Image.new("RGB", size, colour)))
    labels = np.asarray(grid.crop((0, 0, steps.BEFORE_AFTER_LABEL_WIDTH, grid.height)).convert("L"))
    assert (labels < 128).any()  # the prompt and the "base" / "fine-tuned, step 7" labels are drawn there
    with_other_step = tmp_path / "other.png"
    steps.save_before_after(before, after, with_other_step, prompts=["a photo of sks circle", "a red square"], step=8)
    assert with_other_step.read_bytes() != path.read_bytes()  # the step is part of the label
