"""`tinypipe export` / `export_lora`: a repo's LoRA as one file for A1111 / ComfyUI / kohya, read back by a second reader.

The second readers: diffusers' `StableDiffusionPipeline.load_lora_weights(file)`, which reads kohya files with its own
conversion, must give the images the repo gives; and the key set must be the one kohya's sd-scripts write for the same
targets, built here from kohya's documented naming rule (independently of the exporter): the module's path in
kohya's model with "." written "_", prefixed `lora_unet_` / `lora_te_`, suffixed `.lora_down.weight`,
`.lora_up.weight` and `.alpha`.
"""

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from tinypipe import AutoModelPipeline, ConfigError, RepoError
from tinypipe.cli import main
from tinypipe.export import export_lora
from tinypipe.jobs import JobStore
from tinypipe.models import TINY_SD, DiffusionPipeline, builtin_model_folder

PROMPT = "a photo of sks circle"
UNET_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
TEXT_ENCODER_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")


def build_lora_repo(folder, text_encoder_lora=True):
    """A saved repo whose LoRA changes the images: rank 2, alpha 4 (so alpha != rank matters), random up weights."""
    pipeline = DiffusionPipeline(TINY_SD, lora_rank=2, lora_alpha=4, text_encoder_lora=text_encoder_lora,
                                 text_encoder_lora_target_modules=TEXT_ENCODER_TARGETS, device="cpu")
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, parameter in [*pipeline.unet.named_parameters(), *pipeline.text_encoder.named_parameters()]:
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)
    return pipeline.save_pretrained(folder)


def replace_lora_file(repo, tensors, config_changes=None):
    """Write other tensors (and config values) into a copied repo, its filelist re-written, as a save would."""
    from tinypipe.config.filelist import write_filelist

    weights = repo / "model/pytorch_lora_weights.safetensors"
    with safe_open(str(weights), framework="pt") as file:
        metadata = file.metadata()
    save_file(tensors, str(weights), metadata=metadata)
    config = json.loads((repo / "model/config.json").read_text())
    (repo / "model/config.json").write_text(json.dumps({**config, **(config_changes or {})}))
    (repo / "model/filelist.txt").unlink()
    write_filelist(repo / "model")
    return weights


@pytest.fixture(scope="module")
def lora_repo(tmp_path_factory):
    return build_lora_repo(tmp_path_factory.mktemp("export") / "repo")


def images(pipe):
    return pipe(PROMPT, num_inference_steps=2, generator=torch.Generator("cpu").manual_seed(0), output_type="np").images


def kohya_keys_by_the_documented_rule(module_names, prefix, targets):
    """kohya's key names for the modules of `module_names` that end in one of `targets`."""
    keys = set()
    for name in module_names:
        if any(name == target or name.endswith(f".{target}") for target in targets):
            lora_name = f"{prefix}_{name.replace('.', '_')}"
            keys |= {f"{lora_name}.lora_down.weight", f"{lora_name}.lora_up.weight", f"{lora_name}.alpha"}
    return keys


def test_kohya_export_loads_in_diffusers_and_gives_the_repos_images(lora_repo, tmp_path):
    from diffusers import StableDiffusionPipeline

    exported = export_lora(lora_repo, "kohya", tmp_path / "sks-circle.safetensors")

    repo_pipeline = AutoModelPipeline.from_pretrained(lora_repo)
    reader = StableDiffusionPipeline.from_pretrained(builtin_model_folder(TINY_SD))
    reader.set_progress_bar_config(disable=True)
    base = images(reader)
    reader.load_lora_weights(str(exported))  # diffusers' own reader of kohya files
    expected, loaded = images(repo_pipeline.pipe), images(reader)
    assert np.abs(expected - base).max() > 0.05  # the LoRA changes the images, so equality below means something
    np.testing.assert_allclose(loaded, expected, atol=1e-4)


def test_kohya_export_has_the_keys_kohya_writes_with_alpha_and_ss_metadata(lora_repo, tmp_path):
    exported = export_lora(lora_repo, "kohya", tmp_path / "sks-circle.safetensors")

    base = DiffusionPipeline(TINY_SD, device="cpu")
    unet_names = [name for name, _ in base.unet.named_modules()]
    # kohya's text encoder is transformers 4's CLIPTextModel, whose layers live under `text_model.`.
    text_model = base.text_encoder.text_model if hasattr(base.text_encoder, "text_model") else base.text_encoder
    text_names = [f"text_model.{name}" for name, _ in text_model.named_modules()]
    expected = (kohya_keys_by_the_documented_rule(unet_names, "lora_unet", UNET_TARGETS)
                | kohya_keys_by_the_documented_rule(text_names, "lora_te", TEXT_ENCODER_TARGETS))
    tensors = load_file(exported)
    assert set(tensors) == expected
    assert "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight" in tensors
    assert "lora_te_text_model_encoder_layers_0_mlp_fc1.alpha" in tensors
    assert all(tensors[key].item() == 4.0 for key in tensors if key.endswith(".alpha"))
    assert all(tensors[key].shape[0] == 2 for key in tensors if key.endswith(".lora_down.weight"))

    with safe_open(str(exported), framework="pt") as file:
        metadata = file.metadata()
    assert metadata["ss_network_module"] == "networks.lora"
    assert (metadata["ss_network_dim"], metadata["ss_network_alpha"]) == ("2", "4")
    assert metadata["ss_base_model_version"] == "sd_v1" and metadata["ss_v2"] == "False"
    assert metadata["ss_sd_model_name"] == TINY_SD and metadata["ss_tinypipe_version"]
    assert metadata["ss_resolution"] == "(64, 64)"  # no resolution was given: the base model's native one
    assert metadata["modelspec.architecture"] == "stable-diffusion-v1/lora"


def test_comfyui_export_is_the_kohya_file_and_diffusers_export_is_the_repos_file(lora_repo, tmp_path):
    kohya = export_lora(lora_repo, "kohya", tmp_path / "a.safetensors")
    comfyui = export_lora(lora_repo, "comfyui", tmp_path / "b.safetensors")
    diffusers = export_lora(lora_repo, "diffusers", tmp_path / "c.safetensors")
    assert load_file(kohya).keys() == load_file(comfyui).keys()
    assert diffusers.read_bytes() == (lora_repo / "model/pytorch_lora_weights.safetensors").read_bytes()


def test_unet_only_lora_exports_only_lora_unet_keys(tmp_path):
    repo = build_lora_repo(tmp_path / "repo", text_encoder_lora=False)
    tensors = load_file(export_lora(repo, "kohya", tmp_path / "unet.safetensors"))
    assert tensors and all(key.startswith("lora_unet_") for key in tensors)


def test_export_never_replaces_an_existing_file_without_force(lora_repo, tmp_path, monkeypatch, capsys):
    mine = tmp_path / "mine.safetensors"
    mine.write_bytes(b"the user's own file")
    with pytest.raises(ConfigError, match=r"mine.safetensors already exists and is left as it is.*--force"):
        export_lora(lora_repo, "kohya", mine)
    assert main(["export", str(lora_repo), "--to", str(mine)]) == 2
    assert "already exists" in capsys.readouterr().err and mine.read_bytes() == b"the user's own file"

    assert main(["export", str(lora_repo), "--to", str(mine), "--force"]) == 0
    assert "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.alpha" in load_file(mine)
    monkeypatch.chdir(tmp_path)
    assert main(["export", str(lora_repo), "--format", "comfyui"]) == 0  # default name: <repo>-<format>.safetensors
    assert (tmp_path / "repo-comfyui.safetensors").is_file()
    store = JobStore()  # a job's repo folder is always `repo`: its file is named after the job as the user named it
    job = store.create("my-circles", "train-diffuser", "lora", {}, lora_repo)
    store.start(job.id)
    store.finish(job.id, "succeeded")
    assert main(["export", "my-circles", "--format", "comfyui"]) == 0
    assert (tmp_path / "my-circles-comfyui.safetensors").is_file()
    assert [path.name for path in tmp_path.iterdir() if path.name.startswith(".")] == []  # no staging file left


def test_export_refuses_what_it_cannot_write_with_a_clear_error(lora_repo, tmp_path):
    with pytest.raises(ConfigError, match=r"must be a \.safetensors file"):
        export_lora(lora_repo, "kohya", tmp_path / "lora.ckpt")
    with pytest.raises(ConfigError, match=r"Unknown export format 'a1111'"):
        export_lora(lora_repo, "a1111", tmp_path / "lora.safetensors")
    plain = DiffusionPipeline(TINY_SD, device="cpu").save_pretrained(tmp_path / "no-lora")
    with pytest.raises(RepoError, match=r"holds no LoRA"):
        export_lora(plain, "kohya", tmp_path / "lora.safetensors")
    assert not (tmp_path / "lora.safetensors").exists()


def test_export_of_an_altered_repo_is_refused(lora_repo, tmp_path):
    repo = shutil.copytree(lora_repo, tmp_path / "altered")
    with open(repo / "model/pytorch_lora_weights.safetensors", "ab") as file:
        file.write(b"x")
    with pytest.raises(RepoError, match=r"pytorch_lora_weights.safetensors has changed since it was saved"):
        export_lora(repo, "kohya", tmp_path / "out.safetensors")


def test_export_of_a_hub_id_uses_the_copy_in_the_cache_folder(lora_repo, tmp_path):
    cache = tmp_path / "cache"
    shutil.copytree(lora_repo, cache / "me/sks-circle")  # a copy placed there (offline: nothing is downloaded)
    target = tmp_path / "from-hub.safetensors"
    assert main(["export", "me/sks-circle", "--cache-dir", str(cache), "--to", str(target)]) == 0
    assert load_file(target).keys() == load_file(export_lora(lora_repo, "kohya", tmp_path / "local.safetensors")).keys()


def test_a_lora_file_not_in_diffusers_keys_is_a_repo_error_naming_it(lora_repo, tmp_path):
    repo = shutil.copytree(lora_repo, tmp_path / "odd")
    replace_lora_file(repo, {"unet.some.layer.weight": torch.zeros(2, 2)})
    with pytest.raises(RepoError, match=r"pytorch_lora_weights.safetensors: its unet LoRA is not in diffusers' key format"):
        export_lora(repo, "kohya", tmp_path / "odd.safetensors")


def test_a_run_with_export_formats_saves_the_kohya_file_in_its_repo_listed_verified_and_loadable(tmp_path):
    from diffusers import StableDiffusionPipeline

    from tinypipe.builtin.tiny_sd import shapes_dataset
    from tinypipe.config.filelist import verify_filelist
    from tinypipe.trainers import LoRATrainer

    output = tmp_path / "run"
    LoRATrainer().train(data=shapes_dataset(count=2), instance_prompt=PROMPT, max_train_steps=1, rank=2, lora_alpha=4,
                        num_validation_images=0, export_formats="kohya", output_dir=str(output))
    model = output / "model"
    assert "kohya_lora.safetensors " in (model / "filelist.txt").read_text()
    verify_filelist(model)  # the listed hash is the file's
    assert json.loads((output / "trainer/train_config/config.json").read_text())["export_formats"] == ["kohya"]
    with safe_open(str(model / "kohya_lora.safetensors"), framework="pt") as file:
        metadata = file.metadata()
    assert (metadata["ss_network_dim"], metadata["ss_network_alpha"], metadata["ss_max_train_steps"]) == ("2", "4", "1")
    assert metadata["ss_output_name"] == "run" and metadata["ss_resolution"] == "(64, 64)"
    # The card's "How to use" names the saved file, and diffusers reads it as the repo's own LoRA.
    card = (output / "README.md").read_text()
    assert 'weight_name="kohya_lora.safetensors"' in card and "tinypipe export" not in card
    reader = StableDiffusionPipeline.from_pretrained(builtin_model_folder(TINY_SD))
    reader.set_progress_bar_config(disable=True)
    reader.load_lora_weights(str(model), weight_name="kohya_lora.safetensors")
    np.testing.assert_allclose(images(reader), images(AutoModelPipeline.from_pretrained(output).pipe), atol=1e-4)


def test_export_formats_a_model_cannot_be_saved_in_are_refused_before_training(tmp_path):
    from tinypipe.builtin import TINY_FLUX
    from tinypipe.trainers import DreamBoothTrainer, LoRATrainer

    output = tmp_path / "run"
    with pytest.raises(ConfigError, match=r"A flux LoRA cannot be exported in the kohya format .* tinypipe writes: comfyui, diffusers"):
        LoRATrainer().train(base_model=TINY_FLUX, data="tinypipe/shapes", export_formats=["kohya"], output_dir=str(output))
    with pytest.raises(ConfigError, match=r"export_formats \['kohya'\] writes LoRA files, and use_lora is False"):
        DreamBoothTrainer().train(data="tinypipe/shapes", export_formats=["kohya"], output_dir=str(output))
    assert not (output / "model").exists()
    with pytest.raises(ConfigError, match=r"export_formats \['comfyui'\] writes LoRA files, but this Stable Diffusion 1/2 pipeline has no LoRA"):
        DiffusionPipeline(TINY_SD, device="cpu").save_pretrained(tmp_path / "plain", export_formats=["comfyui"])
    assert not (tmp_path / "plain").exists()
