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
    monkeypatch.setattr(steps, "save_images", lambda images, folder: saved.append((images, folder.name)))
    settings = dict(validation_prompt=None, num_validation_images=2, seed=0, validation_inference_steps=1,
                    validation_guidance_scale=1.0, validation_epochs=2)
    validation = steps.Validation.of(settings, default_prompt="a photo of sks circle")
    end_of_epoch = validation.at_epoch_end(None, SimpleNamespace(is_main_process=True), tmp_path)
    for index in range(3):
        end_of_epoch(EpochEnd(index, index + 1, index == 2, []))
    assert saved == [(["a photo of sks circle"] * 2, "epoch-0002"), (["a photo of sks circle"] * 2, "epoch-0003")]
    end_of_epoch_elsewhere = validation.at_epoch_end(None, SimpleNamespace(is_main_process=False), tmp_path)
    end_of_epoch_elsewhere(EpochEnd(1, 2, False, []))
    assert len(saved) == 2  # only the main process validates
