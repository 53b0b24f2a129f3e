"""The published card is Hub-native (metadata read back with huggingface_hub's `ModelCard`), its "How to use" code runs,
and `lora_at_root` publishes the LoRA where `load_lora_weights("user/repo")` finds it.

"Publishing" goes through a fake `HfApi` that copies what `upload_folder` sends into a local folder (as in
test_publish.py); each snippet is taken from the published README.md and run against that local copy, with the hub
id replaced by its path (tinypipe's own snippet finds it in its cache folder, as a placed copy), the base model by
the built-in tiny model's folder, and the 30 denoising steps by 2 (the suite's time).
"""

import re
import shlex
import shutil
from pathlib import Path

import huggingface_hub
import pytest
import torch
from huggingface_hub import ModelCard

from tinypipe import RepoError
from tinypipe.cli import main
from tinypipe.config.card import base_model_license, card_data_from_repo
from tinypipe.config.card_usage import STEPS
from tinypipe.config.hub import resolve_repo
from tinypipe.models import TINY_LLAMA, TINY_SD, CausalLMPipeline, DiffusionPipeline, builtin_lm_folder, builtin_model_folder
from tinypipe.publish import push_repo_folder
from tinypipe.trainers import LoRATrainer

TOKEN = "hf_SECRETtoken123"
PROMPT = "a photo of sks circle"


class FakeHub:
    """`huggingface_hub.HfApi` as far as publishing uses it: the uploaded files land in `FakeHub.root/<repo_id>/`."""

    root: Path

    def __init__(self, token=None):
        pass

    def create_repo(self, repo_id, private=None, exist_ok=False, repo_type=None):
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, repo_id, folder_path, commit_message=None, ignore_patterns=None):
        shutil.copytree(folder_path, FakeHub.root / repo_id, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("checkpoints"))


@pytest.fixture
def hub(tmp_path, monkeypatch):
    FakeHub.root = tmp_path / "hub"
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeHub)
    return FakeHub.root


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    """A 1-step LoRA run (text encoder too) with validation images, as `train(output_dir=...)` writes it."""
    output = tmp_path_factory.mktemp("card") / "lora"
    LoRATrainer().train(data="tinypipe/shapes", instance_prompt=PROMPT, max_train_steps=1, num_validation_images=1,
                        validation_inference_steps=2, use_8bit_adam=False, train_text_encoder=True, output_dir=str(output))
    return output


def snippets(card_text: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", card_text, flags=re.DOTALL)


def run_python(code: str, replacements: dict[str, str]) -> dict:
    assert f"num_inference_steps={STEPS}" in code or "max_new_tokens" in code
    code = code.replace(f"num_inference_steps={STEPS}", "num_inference_steps=2")
    for old, new in replacements.items():
        code = code.replace(f'"{old}"', repr(str(new)))
    namespace: dict = {}
    exec(compile(code, "<card snippet>", "exec"), namespace)
    return namespace


def test_card_metadata_says_what_the_repo_is(lora_run, tmp_path, hub):
    push_repo_folder(lora_run, "me/sks-circle", token=TOKEN)
    card = ModelCard.load(hub / "me/sks-circle/README.md")  # huggingface_hub parses the YAML into ModelCardData
    assert card.data.library_name == "diffusers" and card.data.pipeline_tag == "text-to-image"
    assert card.data.base_model == TINY_SD and card.data.instance_prompt == PROMPT
    assert {"lora", "text-to-image", "template:sd-lora", "diffusers", "tinypipe"} <= set(card.data.tags)
    assert card.data.widget and all(entry["text"] == PROMPT for entry in card.data.widget)
    assert all((hub / "me/sks-circle" / entry["output"]["url"]).is_file() for entry in card.data.widget)
    assert "before_after" not in str(card.data.widget)
    assert card.data.license is None  # the built-in base model has no card with a license


def test_card_license_is_the_base_models_when_its_card_is_at_hand(tmp_path, monkeypatch):
    base = shutil.copytree(builtin_model_folder(TINY_SD), tmp_path / "my-base")
    (base / "README.md").write_text("---\nlicense: creativeml-openrail-m\ntags:\n- stable-diffusion\n---\n# My base\n")
    repo = DiffusionPipeline(str(base), lora_rank=2, device="cpu").save_pretrained(tmp_path / "repo")
    assert card_data_from_repo(repo)["license"] == "creativeml-openrail-m"

    # A hub id whose card huggingface_hub has cached: read from the cache, never downloaded.
    snapshot = tmp_path / "hf-cache/models--org--base/snapshots/abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "README.md").write_text("---\nlicense: apache-2.0\n---\n")
    (tmp_path / "hf-cache/models--org--base/refs").mkdir()
    (tmp_path / "hf-cache/models--org--base/refs/main").write_text("abc123")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    assert base_model_license("org/base") == "apache-2.0"
    assert base_model_license("org/not-cached") is None


def test_every_diffusers_snippet_of_a_lora_card_runs_on_the_published_repo(lora_run, tmp_path, hub, monkeypatch):
    push_repo_folder(lora_run, "me/sks-circle", token=TOKEN)
    published = hub / "me/sks-circle"
    text = (published / "README.md").read_text()
    python, bash = snippets(text, "python"), snippets(text, "bash")
    assert len(python) == 3 and len(bash) == 1  # tinypipe, diffusers, the kohya file in diffusers; tinypipe export
    monkeypatch.chdir(tmp_path)
    local = {"me/sks-circle": published, TINY_SD: builtin_model_folder(TINY_SD)}

    # tinypipe: the published copy placed in its cache folder is used as it is, offline.
    shutil.copytree(published, tmp_path / "tinypipe-cache/me/sks-circle")
    assert run_python(python[0], {})["pipeline"].has_lora and (tmp_path / "sample.png").is_file()

    # diffusers, with subfolder="model": the UNet and text-encoder LoRA are applied.
    pipe = run_python(python[1], local)["pipe"]
    assert "default_0" in pipe.unet.peft_config and "default_0" in pipe.text_encoder.peft_config

    # the kohya file: written by the card's command, read by diffusers.
    command = shlex.split(bash[0].strip().replace("me/sks-circle", str(published), 1))
    assert command[:2] == ["tinypipe", "export"] and main(command[1:]) == 0
    pipe = run_python(python[2], local)["pipe"]
    assert pipe.unet.peft_config and pipe.text_encoder.peft_config


def test_peft_snippet_of_a_causal_lm_card_runs_on_the_published_repo(tmp_path, hub, monkeypatch):
    repo = CausalLMPipeline(TINY_LLAMA, lora_rank=2, device="cpu").save_pretrained(tmp_path / "lm")
    push_repo_folder(repo, "me/tiny-lm", token=TOKEN)
    card = ModelCard.load(hub / "me/tiny-lm/README.md")
    assert card.data.library_name == "peft" and card.data.pipeline_tag == "text-generation"
    python = snippets(card.text, "python")
    assert len(python) == 2 and "subfolder=\"model\"" in python[1]
    monkeypatch.chdir(tmp_path)
    shutil.copytree(hub / "me/tiny-lm", tmp_path / "tinypipe-cache/me/tiny-lm")
    assert run_python(python[0], {})["pipeline"].config["lora_rank"] == 2
    model = run_python(python[1], {"me/tiny-lm": hub / "me/tiny-lm", TINY_LLAMA: builtin_lm_folder(TINY_LLAMA)})["model"]
    assert model.peft_config["default"].r == 2


def test_lora_at_root_loads_with_no_arguments_and_is_verified_on_download(lora_run, tmp_path, hub, monkeypatch):
    before = sorted(path.relative_to(lora_run) for path in lora_run.rglob("*"))
    assert main(["push", str(lora_run), "me/root", "--lora-at-root", "--token", TOKEN]) == 0
    published = hub / "me/root"
    assert sorted(path.relative_to(lora_run) for path in lora_run.rglob("*")) == before  # the local repo only read
    root_lora = published / "pytorch_lora_weights.safetensors"
    assert root_lora.read_bytes() == (published / "model/pytorch_lora_weights.safetensors").read_bytes()
    assert (published / "filelist.txt").read_text().startswith("pytorch_lora_weights.safetensors ")

    diffusers_snippet = snippets((published / "README.md").read_text(), "python")[1]
    assert 'pipe.load_lora_weights("me/root")' in diffusers_snippet
    pipe = run_python(diffusers_snippet, {"me/root": published, TINY_SD: builtin_model_folder(TINY_SD)})["pipe"]
    assert pipe.unet.peft_config

    # A copy of the published repo verifies, root file included; a changed root file is refused.
    cache = tmp_path / "cache"
    shutil.copytree(published, cache / "me/root")
    assert resolve_repo(cache, "me/root") == cache / "me/root"
    with open(cache / "me/root/pytorch_lora_weights.safetensors", "ab") as file:
        file.write(b"x")
    with pytest.raises(RepoError, match=r"pytorch_lora_weights.safetensors has changed since it was saved"):
        resolve_repo(cache, "me/root")


def test_lora_at_root_is_refused_for_a_repo_without_a_lora(tmp_path, hub):
    repo = DiffusionPipeline(TINY_SD, device="cpu").save_pretrained(tmp_path / "plain")
    with pytest.raises(RepoError, match=r"holds no LoRA; leave out lora_at_root"):
        push_repo_folder(repo, "me/plain", token=TOKEN, lora_at_root=True)
    assert not (hub / "me/plain").exists()


def test_diffusers_snippets_of_textual_inversion_and_dreambooth_cards_run_on_the_published_repo(tmp_path, hub, monkeypatch):
    embedding = DiffusionPipeline(TINY_SD, device="cpu")
    embedding.add_textual_inversion("<sks-shape>", torch.randn(1, embedding.text_encoder.config.hidden_size))
    push_repo_folder(embedding.save_pretrained(tmp_path / "ti"), "me/ti", token=TOKEN)
    snippet = snippets((hub / "me/ti/README.md").read_text(), "python")[1]
    assert 'pipe.load_textual_inversion("me/ti", subfolder="model", weight_name="learned_embeds.safetensors")' in snippet
    pipe = run_python(snippet, {"me/ti": hub / "me/ti", TINY_SD: builtin_model_folder(TINY_SD)})["pipe"]
    assert "<sks-shape>" in pipe.tokenizer.get_vocab()

    full = DiffusionPipeline(TINY_SD, device="cpu")
    full.mark_fine_tuned(["unet"])
    push_repo_folder(full.save_pretrained(tmp_path / "dreambooth"), "me/dreambooth", token=TOKEN)
    snippet = snippets((hub / "me/dreambooth/README.md").read_text(), "python")[1]
    assert 'snapshot_download("me/dreambooth", allow_patterns=["model/*"])' in snippet
    downloads = []  # the hub download gives the published copy, as snapshot_download would
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda repo_id, **kwargs: downloads.append(repo_id) or str(hub / repo_id))
    assert type(run_python(snippet, {})["pipe"]).__name__ == "StableDiffusionPipeline" and downloads == ["me/dreambooth"]
