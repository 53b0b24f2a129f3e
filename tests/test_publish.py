"""Publishing saved repos to the hub (`push_repo_folder`, `save_pretrained(push_to_hub=True)`), with HfApi patched.

The fake HfApi copies what `upload_folder` would send (its ignore patterns applied, as huggingface_hub does),
so the tests check what would land on the hub: the card, the images it links, the absence of checkpoints
and of the token.
"""

import logging
import re
import shlex
import shutil
from pathlib import Path

import huggingface_hub
import pytest
import torch
from huggingface_hub import ModelCard
from huggingface_hub.utils import filter_repo_objects

from tinypipe import AutoModelPipeline, RepoError
from tinypipe.cli import main
from tinypipe.config.filelist import verify_filelist
from tinypipe.models import TINY_LLAMA, TINY_SD, CausalLMPipeline, DiffusionPipeline, builtin_lm_folder, builtin_model_folder
from tinypipe.builtin.tiny_llama import TINY_INSTRUCTIONS
from tinypipe.config.card import base_model_license, card_data_from_repo, public_training_arguments
from tinypipe.config.card_usage import STEPS
from tinypipe.config.hub import resolve_repo
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

    def upload_folder(self, repo_id, folder_path, commit_message=None, ignore_patterns=None, delete_patterns=None):
        FakeHub.calls.append(("upload_folder", repo_id, Path(folder_path), tuple(ignore_patterns or ())))
        if FakeHub.fail_upload_with is not None:
            raise FakeHub.fail_upload_with
        remote = FakeHub.root / repo_id
        published = [path.relative_to(remote).as_posix() for path in remote.rglob("*") if path.is_file()] if remote.is_dir() else []
        for relative in filter_repo_objects(published, allow_patterns=delete_patterns or []):
            (remote / relative).unlink()  # as the hub does: remote files matching delete_patterns go, uploaded ones return
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


def test_push_publishes_the_hubs_card_in_place_of_the_local_generated_one_and_leaves_that_as_it_was(lora_repo, hub):
    from tinypipe.config.card import GENERATED_CARD_MARKER

    local_card = (lora_repo / "README.md").read_text()
    assert GENERATED_CARD_MARKER in local_card and "![Training loss per optimizer step](trainer/loss.png)" in local_card
    push_repo_folder(lora_repo, "me/sks-circle", token=TOKEN)
    published = (hub.root / "me/sks-circle" / "README.md").read_text()
    assert published.splitlines().count("# me/sks-circle") == 1 and GENERATED_CARD_MARKER not in published
    assert "![Training loss per optimizer step](trainer/loss.png)" in published
    assert (hub.root / "me/sks-circle" / "trainer" / "loss.png").is_file()
    assert (lora_repo / "README.md").read_text() == local_card  # not written through a hard link


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


def test_published_trained_and_derived_repos_carry_no_local_path_or_token(lora_run, lora_repo, tmp_path, hub):
    from tinypipe.derive import derive_pipeline

    derived = derive_pipeline(lora_repo, tmp_path / "derived", lora=lora_repo)
    local = [str(folder.resolve()).encode() for folder in (lora_run.parent, tmp_path)]  # where the run and the copies lie
    assert any(local[0] in content for content in files_of(lora_repo).values())  # the local repo records what ran
    for repo, repo_id in ((lora_repo, "me/trained"), (derived, "me/derived")):
        push_repo_folder(repo, repo_id, token=TOKEN)
        published = files_of(hub.root / repo_id)
        assert published and [name for name, content in published.items()
                              if any(path in content for path in local) or TOKEN.encode() in content] == [], repo_id


# -- the Hub-native card: metadata read back with huggingface_hub's ModelCard, "How to use" code run on the published
# copy (the hub id replaced by its path, or found in tinypipe's cache folder as a placed copy; the base model by the
# built-in tiny model's folder; the 30 denoising steps by 2, for the suite's time), and lora_at_root.


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
    card = ModelCard.load(hub.root / "me/sks-circle/README.md")  # huggingface_hub parses the YAML into ModelCardData
    assert card.data.library_name == "diffusers" and card.data.pipeline_tag == "text-to-image"
    assert card.data.base_model == TINY_SD and card.data.instance_prompt == INSTANCE_PROMPT
    assert {"lora", "text-to-image", "template:sd-lora", "diffusers", "tinypipe"} <= set(card.data.tags)
    assert card.data.widget and all(entry["text"] == INSTANCE_PROMPT for entry in card.data.widget)
    assert all((hub.root / "me/sks-circle" / entry["output"]["url"]).is_file() for entry in card.data.widget)
    assert "before_after" not in str(card.data.widget)
    assert card.data.license is None  # the built-in base model has no card with a license


def test_card_license_is_the_base_models_when_its_card_is_at_hand(tmp_path, monkeypatch):
    base = shutil.copytree(builtin_model_folder(TINY_SD), tmp_path / "my-base")
    (base / "README.md").write_text("---\nlicense: creativeml-openrail-m\ntags:\n- stable-diffusion\n---\n# My base\n")
    repo = DiffusionPipeline(str(base), lora_rank=2, device="cpu").save_pretrained(tmp_path / "repo")
    assert card_data_from_repo(repo)["license"] == "creativeml-openrail-m"
    (base / "README.md").write_text("---\nlicense: [unclosed\n---\n")  # a card whose front matter is not YAML
    assert card_data_from_repo(repo)["license"] is None

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
    published = hub.root / "me/sks-circle"
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
    assert "default_0" in pipe.unet.peft_config

    # the kohya file: written by the card's command, read by diffusers.
    command = shlex.split(bash[0].strip().replace("me/sks-circle", str(published), 1))
    assert command[:2] == ["tinypipe", "export"] and main(command[1:]) == 0
    pipe = run_python(python[2], local)["pipe"]
    assert pipe.unet.peft_config


def test_peft_snippet_of_a_causal_lm_card_runs_on_the_published_repo(tmp_path, hub, monkeypatch):
    repo = CausalLMPipeline(TINY_LLAMA, lora_rank=2, device="cpu").save_pretrained(tmp_path / "lm")
    push_repo_folder(repo, "me/tiny-lm", token=TOKEN)
    card = ModelCard.load(hub.root / "me/tiny-lm/README.md")
    assert card.data.library_name == "peft" and card.data.pipeline_tag == "text-generation"
    python = snippets(card.text, "python")
    assert len(python) == 2 and "subfolder=\"model\"" in python[1]
    monkeypatch.chdir(tmp_path)
    shutil.copytree(hub.root / "me/tiny-lm", tmp_path / "tinypipe-cache/me/tiny-lm")
    assert run_python(python[0], {})["pipeline"].config["lora_rank"] == 2
    model = run_python(python[1], {"me/tiny-lm": hub.root / "me/tiny-lm", TINY_LLAMA: builtin_lm_folder(TINY_LLAMA)})["model"]
    assert model.peft_config["default"].r == 2


def test_lora_at_root_loads_with_no_arguments_and_is_verified_on_download(lora_run, tmp_path, hub, monkeypatch):
    before = sorted(path.relative_to(lora_run) for path in lora_run.rglob("*"))
    assert main(["push", str(lora_run), "me/root", "--lora-at-root", "--token", TOKEN]) == 0
    published = hub.root / "me/root"
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

    # A later push without the option takes the root copy away, so it never outlives the LoRA it copied.
    push_repo_folder(lora_run, "me/root", token=TOKEN)
    assert not root_lora.exists() and not (published / "filelist.txt").exists()
    assert (published / "model/pytorch_lora_weights.safetensors").is_file()


def test_lora_at_root_is_refused_for_a_repo_without_a_lora(tmp_path, hub):
    repo = DiffusionPipeline(TINY_SD, device="cpu").save_pretrained(tmp_path / "plain")
    with pytest.raises(RepoError, match=r"holds no LoRA; leave out lora_at_root"):
        push_repo_folder(repo, "me/plain", token=TOKEN, lora_at_root=True)
    assert not (hub.root / "me/plain").exists()


def test_diffusers_snippets_of_textual_inversion_and_dreambooth_cards_run_on_the_published_repo(tmp_path, hub, monkeypatch):
    embedding = DiffusionPipeline(TINY_SD, device="cpu")
    embedding.add_textual_inversion("<sks-shape>", torch.randn(1, embedding.text_encoder.config.hidden_size))
    push_repo_folder(embedding.save_pretrained(tmp_path / "ti"), "me/ti", token=TOKEN)
    snippet = snippets((hub.root / "me/ti/README.md").read_text(), "python")[1]
    assert 'pipe.load_textual_inversion("me/ti", subfolder="model", weight_name="learned_embeds.safetensors")' in snippet
    pipe = run_python(snippet, {"me/ti": hub.root / "me/ti", TINY_SD: builtin_model_folder(TINY_SD)})["pipe"]
    assert "<sks-shape>" in pipe.tokenizer.get_vocab()

    full = DiffusionPipeline(TINY_SD, device="cpu")
    full.mark_fine_tuned(["unet"])
    push_repo_folder(full.save_pretrained(tmp_path / "dreambooth"), "me/dreambooth", token=TOKEN)
    snippet = snippets((hub.root / "me/dreambooth/README.md").read_text(), "python")[1]
    assert 'snapshot_download("me/dreambooth", allow_patterns=["model/*"])' in snippet
    downloads = []  # the hub download gives the published copy, as snapshot_download would
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda repo_id, **kwargs: downloads.append(repo_id) or str(hub.root / repo_id))
    assert type(run_python(snippet, {})["pipe"]).__name__ == "StableDiffusionPipeline" and downloads == ["me/dreambooth"]
