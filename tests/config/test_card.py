"""The model card a saved repo carries as README.md (`config/card.py`): the loss curve and the validation images,
rewritten on each save, never over a README of the user's, and replaced by the hub's card on a push."""

import json

from tinypipe.config.card import GENERATED_CARD_MARKER, card_data_from_repo, render_model_card, write_repo_card


def saved_repo(tmp_path):
    """A repo folder as a training run leaves it: model and trainer configs, the loss curve, validation images."""
    repo = tmp_path / "my-lora"
    (repo / "model").mkdir(parents=True)
    (repo / "model" / "config.json").write_text(json.dumps({"__module__": "somewhere.Unknown"}))
    (repo / "trainer" / "train_config").mkdir(parents=True)
    (repo / "trainer" / "config.json").write_text(json.dumps({"__module__": "somewhere.Trainer",
                                                              "train_config": {"__subfolder__": None}}))
    (repo / "trainer" / "train_config" / "config.json").write_text(json.dumps(
        {"validation_prompts": ["a photo of sks dog", "sks dog on a beach"], "output_dir": str(repo), "seed": 0}))
    (repo / "trainer" / "loss.png").write_bytes(b"png")
    (repo / "validation").mkdir()
    (repo / "validation" / "before_after.png").write_bytes(b"png")
    return repo


def test_the_repo_card_shows_the_loss_curve_validation_images_and_every_validation_prompt(tmp_path):
    repo = saved_repo(tmp_path)
    card = write_repo_card(repo).read_text()
    assert "![Training loss per optimizer step](trainer/loss.png)" in card
    assert "![](validation/before_after.png)" in card
    assert "Validation prompts: `a photo of sks dog`, `sks dog on a beach`" in card
    assert str(tmp_path) not in card and card.rstrip().endswith(GENERATED_CARD_MARKER)


def test_the_card_is_rewritten_on_each_save_but_a_readme_of_the_users_is_kept(tmp_path):
    repo = saved_repo(tmp_path)
    write_repo_card(repo)
    (repo / "trainer" / "loss.png").unlink()
    assert "trainer/loss.png" not in write_repo_card(repo).read_text()  # tinypipe's own card follows the repo
    (repo / "README.md").write_text("# My notes\n")
    assert write_repo_card(repo) is None and (repo / "README.md").read_text() == "# My notes\n"


def test_a_card_without_a_loss_curve_says_nothing_of_one(tmp_path):
    repo = saved_repo(tmp_path)
    (repo / "trainer" / "loss.png").unlink()
    assert "Training loss" not in str(render_model_card(card_data_from_repo(repo), "me/my-lora"))
