"""Publishing saved repos to the hub (`push_repo_folder`, `save_pretrained(push_to_hub=True)`), with HfApi patched.

The fake HfApi copies what `upload_folder` would send (its ignore patterns applied, as huggingface_hub does),
so the tests check what would land on the hub: the card, the images it links, the absence of checkpoints
and of the token.
"""

import logging
import re
import shutil
from pathlib import Path

import huggingface_hub
import pytest
import torch
from huggingface_hub.utils import filter_repo_objects

from tinypipe import AutoModelPipeline, RepoError
from tinypipe.config.filelist import verify_filelist
from tinypipe.models import CausalLMPipeline, DiffusionPipeline
from tinypipe.builtin.tiny_llama import TINY_INSTRUCTIONS
from tinypipe.config.card import card_data_from_repo, public_training_arguments
from tinypipe.publish import push_repo_folder
from tinypipe.trainers import CausalLMTrainer, LoRATrainer

TOKEN = "hf_SECRETtoken123"
INSTANCE_PROMPT = "a photo of sks circle"


class FakeHub:
    """Stands in for `huggingface_hub.HfApi`: records calls, copies the uploaded files into `hub/<repo_id>/`."""

    root: Path
    calls: list = []
    fail_upload_with: Exception = None

    def __init__(self, token=None):
        FakeHub.calls.append(("HfApi", token))

    def create_repo(self, repo_id, private=None, exist_ok=False, repo_type=None):
        FakeHub.calls.append(("create_repo", repo_id, private))
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, repo_id, folder_path, commit_message=None, ignore_patterns=None):
        FakeHub.calls.append(("upload_folder", repo_id, Path(folder_path), tuple(ignore_patterns or ())))
        if FakeHub.fail_upload_with is not None:
            raise FakeHub.fail_upload_with
        folder = Path(folder_path)
        files = [path.relative_to(folder).as_posix() for path in sorted(folder.rglob("*")) if path.is_file()]
        for relative in filter_repo_objects(files, ignore_patterns=ignore_patterns):
            (FakeHub.root / repo_id / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(folder / relative, FakeHub.root / repo_id / relative)


@pytest.fixture
def hub(tmp_path, monkeypatch):
    FakeHub.root, FakeHub.calls, FakeHub.fail_upload_with = tmp_path / "hub", [], None
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeHub)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)  # no stored login on the test machine
    monkeypatch.delenv("HF_TOKEN", raising=False)
    return FakeHub


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    """A 2-step LoRA run with checkpoints and validation images, as `train(output_dir=...)` writes it."""
    output = tmp_path_factory.mktemp("publish") / "lora"
    LoRATrainer().train(data="tinypipe/shapes", instance_prompt=INSTANCE_PROMPT, max_train_steps=2, checkpointing_steps=1,
                        num_validation_images=1, validation_inference_steps=2, use_8bit_adam=False, output_dir=str(output))
    return output


@pytest.fixture
def lora_repo(tmp_path, lora_run):
    return Path(shutil.copytree(lora_run, tmp_path / "lora"))


def files_of(folder: Path) -> dict[str, bytes]:
    return {path.relative_to(folder).as_posix(): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def test_push_publishes_a_complete_card_and_no_checkpoints_or_token(lora_repo, hub, caplog, capfd):
    caplog.set_level(logging.DEBUG)
    url = push_repo_folder(lora_repo, "me/sks-circle", private=True, token=TOKEN)

    assert url == "https://huggingface.co/me/sks-circle"
    assert hub.calls[:2] == [("HfApi", TOKEN), ("create_repo", "me/sks-circle", True)]
    uploaded = hub.root / "me/sks-circle"
    card = huggingface_hub.ModelCard.load(uploaded / "README.md")
    assert card.data.base_model == "tinypipe/tiny-sd" and card.data.library_name == "diffusers"
    assert {"diffusers", "lora", "tinypipe"} <= set(card.data.tags)
    assert card.data.instance_prompt == INSTANCE_PROMPT
    assert f"Instance prompt: `{INSTANCE_PROMPT}`" in card.text and '"max_train_steps": 2' in card.text
    images = re.findall(r"!\[\]\((.+?)\)", card.text)
    assert images[0] == "validation/before_after.png" and "validation/epoch-0001/image-00.png" in images
    assert all((uploaded / image).is_file() for image in images)

    # Optimizer state stays home; the published repo verifies and loads.
    assert (lora_repo / "checkpoints").is_dir() and not (uploaded / "checkpoints").exists()
    verify_filelist(lora_repo / "model")
    assert AutoModelPipeline.from_pretrained(uploaded).has_lora

    # The token went to HfApi only.
    for folder in (lora_repo, uploaded):
        for name, content in files_of(folder).items():
            assert TOKEN.encode() not in content, name
    captured = capfd.readouterr()
    assert "me/sks-circle" in caplog.text
    assert TOKEN not in caplog.text + captured.out + captured.err


def test_push_without_a_token_sends_nothing_and_says_how_to_log_in(lora_repo, hub):
    before = files_of(lora_repo)
    with pytest.raises(RepoError, match=r"needs a Hugging Face token.*local repo at .*lora is saved and intact\. "
                                         r"Log in with `hf auth login`, or set HF_TOKEN"):
        push_repo_folder(lora_repo, "me/sks-circle")
    assert hub.calls == []
    assert files_of(lora_repo) == before


def test_failed_upload_keeps_the_local_repo_and_hides_the_token(lora_repo, hub):
    hub.fail_upload_with = OSError(f"connection reset (sent {TOKEN})")
    with pytest.raises(RepoError, match=r"failed \(OSError: connection reset.*saved and intact\. Log in with") as raised:
        push_repo_folder(lora_repo, "me/sks-circle", token=TOKEN)
    assert TOKEN not in str(raised.value)
    assert not (hub.root / "me/sks-circle").exists()
    assert AutoModelPipeline.from_pretrained(lora_repo).has_lora


def test_save_pretrained_push_to_hub_writes_the_same_full_card(lora_repo, hub):
    pipeline = AutoModelPipeline.from_pretrained(lora_repo)
    pipeline.save_pretrained(lora_repo, push_to_hub=True, repo_id="me/again", token=TOKEN)
    card = (hub.root / "me/again/README.md").read_text()
    for expected in (INSTANCE_PROMPT, '"max_train_steps": 2', "![](validation/before_after.png)", "- lora", "`LoRATrainer`"):
        assert expected in card
    assert not (hub.root / "me/again/checkpoints").exists()
    assert TOKEN not in card


def test_training_arguments_on_the_card_leave_out_credentials_paths_and_none():
    arguments = {"learning_rate": 1e-4, "placeholder_token": "<sks>", "initializer_token": "toy", "seed": None,
                 "hub_token": "abc", "api_key": "abc", "password": "abc", "client_secret": "abc",
                 "note": "hf_" + "a1" * 12, "output_dir": "/home/me/out"}
    assert public_training_arguments(arguments) == {"learning_rate": 1e-4, "placeholder_token": "<sks>", "initializer_token": "toy"}


def test_causal_lm_repo_card_is_tagged_peft(tmp_path, hub):
    output = tmp_path / "lm"
    CausalLMTrainer().train(data=TINY_INSTRUCTIONS, max_train_steps=2, train_batch_size=4, output_dir=str(output))
    push_repo_folder(output, "me/tiny-llama-lora", token=TOKEN)

    data = card_data_from_repo(output)
    assert data["base_model"] == "tinypipe/tiny-llama" and data["method"] == "LoRA (PEFT)"
    assert {"peft", "lora", "text-generation"} <= set(data["tags"])
    assert data["training_arguments"]["max_train_steps"] == 2 and data["images"] == []
    uploaded = hub.root / "me/tiny-llama-lora"
    card = huggingface_hub.ModelCard.load(uploaded / "README.md")
    assert card.data.base_model == "tinypipe/tiny-llama" and "peft" in card.data.tags
    assert isinstance(AutoModelPipeline.from_pretrained(uploaded), CausalLMPipeline)


def test_textual_inversion_repo_is_tagged_textual_inversion(tmp_path, hub):
    pipeline = DiffusionPipeline("tinypipe/tiny-sd")
    pipeline.add_textual_inversion("<sks-shape>", torch.zeros(1, pipeline.text_encoder.config.hidden_size))
    pipeline.save_pretrained(tmp_path / "ti")
    push_repo_folder(tmp_path / "ti", "me/sks-shape", token=TOKEN)
    card = huggingface_hub.ModelCard.load(hub.root / "me/sks-shape/README.md")
    assert "textual_inversion" in card.data.tags and "lora" not in card.data.tags
    assert "textual inversion" in card.text


def test_push_of_a_folder_without_a_model_is_refused(tmp_path, hub):
    (tmp_path / "empty").mkdir()
    with pytest.raises(RepoError, match=r"model/config.json is missing"):
        push_repo_folder(tmp_path / "empty", "me/empty", token=TOKEN)
    assert hub.calls == []


def test_failed_push_keeps_users_readme(lora_repo, hub):
    (lora_repo / "README.md").write_text("# My model\n\nNotes that exist nowhere else.\n")
    hub.fail_upload_with = OSError("connection reset")
    with pytest.raises(RepoError, match="failed"):
        AutoModelPipeline.from_pretrained(lora_repo).save_pretrained(lora_repo, push_to_hub=True, repo_id="me/mine", token=TOKEN)
    assert (lora_repo / "README.md").read_text() == "# My model\n\nNotes that exist nowhere else.\n"
    hub.fail_upload_with = None
    before = files_of(lora_repo)
    push_repo_folder(lora_repo, "me/mine", token=TOKEN)
    assert files_of(lora_repo) == before  # a push only reads the folder
    assert (hub.root / "me/mine/README.md").read_text() == before["README.md"].decode()  # the user's card is published as written


def test_published_files_carry_no_local_paths_or_user_names(tmp_path, hub):
    from tinypipe.models import TINY_SD, builtin_model_folder

    local_base = str(builtin_model_folder(TINY_SD))  # an absolute path on this machine, with the user's home in it
    repo = DiffusionPipeline(local_base, lora_rank=2).save_pretrained(tmp_path / "repo")
    push_repo_folder(repo, "me/local-base", token=TOKEN)
    uploaded = hub.root / "me/local-base"
    for name, content in files_of(uploaded).items():
        assert local_base.encode() not in content and str(Path.home()).encode() not in content, name
    assert '"base_model": "tinypipe--tiny-sd"' in (uploaded / "model/config.json").read_text()
    verify_filelist(uploaded / "model", use_stamps=False)  # the published copy's filelist matches what it holds
    assert local_base in (repo / "model/config.json").read_text()  # the local repo still records what ran
