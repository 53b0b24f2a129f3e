"""`tinypipe export` of SDXL, FLUX.1 and SD3 LoRAs, each read back by a second reader.

SDXL, kohya format: diffusers' `StableDiffusionXLPipeline.load_lora_weights(file)` (its own reader of kohya SDXL files,
sgm block names included) must give the images of the pipeline that was saved; the UNet names must be the ones Stability's sgm UNet uses,
checked by diffusers' single-file converter (`convert_ldm_unet_checkpoint`, an independent reader of sgm names), and
the key set the one kohya's naming rule gives: `lora_unet_` + the sgm module path with "." written "_",
`lora_te1_` / `lora_te2_` + the CLIP path under `text_model.`, each with `.lora_down.weight`, `.lora_up.weight`,
`.alpha`. FLUX.1 and SD3, ComfyUI format: diffusers' `FluxPipeline` / `StableDiffusion3Pipeline.load_lora_weights(file)`
must give the images of the pipeline that was saved.
"""

import shutil

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from tinypipe import ConfigError
from tinypipe.builtin import TINY_FLUX, TINY_SD3, TINY_SDXL
from tinypipe.builtin.diffusion_folders import builtin_diffusion_folder
from tinypipe.builtin.tiny_sdxl import build_tiny_sdxl
from tinypipe.export import export_lora
from tinypipe.models import DiffusionPipeline

PROMPT = "a photo of sks circle"
# Attention, feed-forward and resnet layers, so that every kind of sgm name is written (resnets are renamed inside).
SDXL_UNET_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "proj_in", "ff.net.0.proj", "conv1", "time_emb_proj", "conv_shortcut")
TEXT_ENCODER_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")


def lora_repo(folder, base_model, **lora):
    """A saved repo whose LoRA changes the images: rank 2, alpha 4 (alpha != rank matters), random up weights; and
    the images of the pipeline that was saved (the LoRA as trained)."""
    pipeline = DiffusionPipeline(base_model, lora_rank=2, lora_alpha=4, text_encoder_lora=True,
                                 text_encoder_lora_target_modules=TEXT_ENCODER_TARGETS, device="cpu", **lora)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for component in (pipeline.pipe.unet if hasattr(pipeline.pipe, "unet") else pipeline.pipe.transformer,
                          pipeline.pipe.text_encoder, getattr(pipeline.pipe, "text_encoder_2", None)):
            for name, parameter in component.named_parameters() if component is not None else ():
                if "lora_B" in name:
                    parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)
    size = {} if hasattr(pipeline.pipe, "unet") else {"height": 32, "width": 32}
    return pipeline.save_pretrained(folder), images(pipeline.pipe, **size), pipeline.pipe


def images(pipe, **size):
    return pipe(PROMPT, num_inference_steps=2, generator=torch.Generator("cpu").manual_seed(0), output_type="np", **size).images


def read_back(reader_class, base_model, exported, **size):
    """(the base model's images, the base model's with the exported file loaded by diffusers)."""
    reader = reader_class.from_pretrained(builtin_diffusion_folder(base_model))
    reader.set_progress_bar_config(disable=True)
    base = images(reader, **size)
    reader.load_lora_weights(str(exported))
    return base, images(reader, **size)


@pytest.fixture(scope="module")
def sdxl_repo(tmp_path_factory):
    return lora_repo(tmp_path_factory.mktemp("export_sdxl") / "repo", TINY_SDXL, lora_target_modules=SDXL_UNET_TARGETS)


def test_sdxl_kohya_export_loads_in_diffusers_and_gives_the_saved_pipelines_images(sdxl_repo, tmp_path):
    from diffusers import StableDiffusionXLPipeline

    repo, expected, _ = sdxl_repo
    exported = export_lora(repo, "kohya", tmp_path / "sdxl.safetensors")
    base, loaded = read_back(StableDiffusionXLPipeline, TINY_SDXL, exported)
    assert np.abs(expected - base).max() > 0.05  # the LoRA changes the images, so equality below means something
    np.testing.assert_allclose(loaded, expected, atol=1e-4)


def test_an_sdxl_repo_with_a_lora_on_attention_and_resnet_layers_reloads_every_layer(sdxl_repo):
    # the repo's LoRA file holds every UNet layer in one key form, so diffusers' reader drops none of them
    from tinypipe import AutoModelPipeline

    repo, _, saved = sdxl_repo
    assert_same_unet_lora(AutoModelPipeline.from_pretrained(repo).pipe, saved)


def assert_same_unet_lora(loaded, saved):
    """Every UNet LoRA weight of `saved` is in `loaded`, equal, and no other."""

    def lora_weights(pipe):
        return {key.replace(".default_0", "").replace(".default", ""): value
                for key, value in pipe.unet.state_dict().items() if "lora_" in key}
    weights, saved_weights = lora_weights(loaded), lora_weights(saved)
    assert weights.keys() == saved_weights.keys() and all(torch.equal(weights[key], saved_weights[key]) for key in weights)


def test_a_repo_saved_with_mixed_unet_key_forms_still_reloads_its_attention_lora(sdxl_repo, tmp_path):
    # tinypipe once saved attention layers as `lora.down` and the other UNet layers as peft's `lora_A`; diffusers reads a
    # part in the form of its first key, so without tinypipe's repair the attention LoRA would be silently dropped
    import shutil

    from safetensors import safe_open
    from safetensors.torch import save_file

    from tinypipe import AutoModelPipeline
    from tinypipe.config.filelist import write_filelist

    repo, _, saved = sdxl_repo
    old = shutil.copytree(repo, tmp_path / "old")
    weights = old / "model" / "pytorch_lora_weights.safetensors"
    with safe_open(str(weights), "pt") as handle:
        metadata = handle.metadata()
        tensors = {(key.replace(".lora.down.", ".lora_A.").replace(".lora.up.", ".lora_B.")
                    if key.startswith("unet.") and not any(f".{name}." in key for name in ("to_q", "to_k", "to_v", "to_out"))
                    else key): handle.get_tensor(key) for key in handle.keys()}
    assert any(".lora_A." in key for key in tensors) and any(".lora.down." in key for key in tensors)
    save_file(tensors, str(weights), metadata=metadata)
    write_filelist(old / "model")  # as that repo was saved: its filelist lists this file

    assert_same_unet_lora(AutoModelPipeline.from_pretrained(old).pipe, saved)


def test_sdxl_unet_modules_are_named_as_in_the_sgm_unet():
    from diffusers.loaders.single_file_utils import LDM_UNET_KEY, convert_ldm_unet_checkpoint

    from tinypipe.models.kohya_sdxl_names import SgmNames

    unet = build_tiny_sdxl().unet
    names, weights = SgmNames(unet.config), unet.state_dict()
    sgm = {}
    for key, value in weights.items():
        module, _, parameter = key.rpartition(".")
        sgm[f"{LDM_UNET_KEY}{names.of(module)}.{parameter}"] = value
    # diffusers' own reader of sgm checkpoints turns the names back into the UNet's, every weight in its place.
    back = convert_ldm_unet_checkpoint(sgm, dict(unet.config))
    assert back.keys() == weights.keys() and all(torch.equal(back[key], weights[key]) for key in weights)
    # as kohya's SDXL LoRAs name them: the first cross-attention block of tiny-sdxl (1 layer per block) is input_blocks.3
    assert names.of("down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q") == "input_blocks.3.1.transformer_blocks.0.attn1.to_q"
    assert names.of("up_blocks.0.resnets.1.conv1") == "output_blocks.1.0.in_layers.2"
    with pytest.raises(ConfigError, match=r"'down_blocks.7.widgets.0' has no name in kohya's SDXL \(sgm\) UNet"):
        names.of("down_blocks.7.widgets.0")


def test_sdxl_kohya_export_has_kohyas_keys_alpha_and_sdxl_metadata(sdxl_repo, tmp_path):
    from tinypipe.models.kohya_sdxl_names import SgmNames

    sdxl_repo, _, pipe = sdxl_repo
    exported = export_lora(sdxl_repo, "kohya", tmp_path / "sdxl.safetensors")
    base = pipe  # the saved pipeline: its LoRA'd modules keep their paths (peft adds children under them)
    names = SgmNames(base.unet.config)

    def rule(prefix, module_names, targets):
        lora_names = {f"{prefix}_{name.replace('.', '_')}" for name in module_names}
        return {f"{name}{suffix}" for name in lora_names for suffix in (".lora_down.weight", ".lora_up.weight", ".alpha")}

    def targeted(model, targets):
        return [name for name, _ in model.named_modules() if any(name == t or name.endswith(f".{t}") for t in targets)]

    def clip_paths(encoder):  # kohya's CLIP is transformers 4's, its layers under `text_model.`
        model = encoder.text_model if hasattr(encoder, "text_model") else encoder
        return [f"text_model.{name}" for name in targeted(model, TEXT_ENCODER_TARGETS)]

    expected = (rule("lora_unet", [names.of(name) for name in targeted(base.unet, SDXL_UNET_TARGETS)], SDXL_UNET_TARGETS)
                | rule("lora_te1", clip_paths(base.text_encoder), TEXT_ENCODER_TARGETS)
                | rule("lora_te2", clip_paths(base.text_encoder_2), TEXT_ENCODER_TARGETS))
    tensors = load_file(exported)
    assert set(tensors) == expected
    assert {"lora_unet_input_blocks_3_1_transformer_blocks_0_attn1_to_q.alpha", "lora_unet_middle_block_0_in_layers_2.alpha",
            "lora_unet_output_blocks_0_0_skip_connection.alpha", "lora_te2_text_model_encoder_layers_1_self_attn_q_proj.alpha"} < set(tensors)
    # no silent drops: each LoRA weight of the repo is one down/up weight of the file
    repo_weights = load_file(sdxl_repo / "model/pytorch_lora_weights.safetensors")
    assert len([key for key in tensors if not key.endswith(".alpha")]) == len(repo_weights)
    assert all(tensors[key].item() == 4.0 for key in tensors if key.endswith(".alpha"))
    with safe_open(str(exported), framework="pt") as file:
        metadata = file.metadata()
    assert metadata["ss_base_model_version"] == "sdxl_base_v1-0" and metadata["ss_v2"] == "False"
    assert (metadata["ss_network_dim"], metadata["ss_network_alpha"], metadata["ss_network_module"]) == ("2", "4", "networks.lora")
    assert metadata["ss_resolution"] == "(32, 32)" and metadata["modelspec.architecture"] == "stable-diffusion-xl-v1-base/lora"


def test_an_sdxl_lora_module_kohya_cannot_name_is_refused_naming_it(sdxl_repo, tmp_path):
    from test_export import replace_lora_file

    sdxl_repo, _, _ = sdxl_repo
    repo = shutil.copytree(sdxl_repo, tmp_path / "odd")
    tensors = load_file(repo / "model/pytorch_lora_weights.safetensors")
    tensors.update({"unet.down_blocks.0.widgets.0.proj.lora.down.weight": torch.zeros(2, 4),
                    "unet.down_blocks.0.widgets.0.proj.lora.up.weight": torch.zeros(4, 2)})
    replace_lora_file(repo, tensors)
    with pytest.raises(ConfigError, match=r"'down_blocks.0.widgets.0.proj' has no name in kohya's SDXL"):
        export_lora(repo, "comfyui", tmp_path / "odd.safetensors")
    assert not (tmp_path / "odd.safetensors").exists()


@pytest.fixture(scope="module")
def flux_repo(tmp_path_factory):
    return lora_repo(tmp_path_factory.mktemp("export_flux") / "repo", TINY_FLUX)


@pytest.fixture(scope="module")
def sd3_repo(tmp_path_factory):
    return lora_repo(tmp_path_factory.mktemp("export_sd3") / "repo", TINY_SD3)


@pytest.mark.parametrize("family", ["flux", "sd3"])
def test_comfyui_export_of_a_transformer_family_loads_in_diffusers_and_gives_the_saved_pipelines_images(
        family, flux_repo, sd3_repo, tmp_path):
    from diffusers import FluxPipeline, StableDiffusion3Pipeline

    # FLUX.1: an .alpha per module (4, the trained alpha); SD3, whose diffusers reader refuses .alpha keys: the scale
    # alpha / rank folded into lora_B, so that ComfyUI (no .alpha: strength 1) and diffusers apply the trained strength
    (repo, expected, _), reader, base_model, version, roots, alpha = {
        "flux": (flux_repo, FluxPipeline, TINY_FLUX, "flux1", ("transformer.", "text_encoder.text_model."), "4"),
        "sd3": (sd3_repo, StableDiffusion3Pipeline, TINY_SD3, "sd3",
                ("transformer.", "text_encoder.text_model.", "text_encoder_2.text_model."), "2"),
    }[family]
    exported = export_lora(repo, "comfyui", tmp_path / f"{family}.safetensors")
    tensors = load_file(exported)
    # ComfyUI's names: transformer.<diffusers path>, text_encoder(_2).text_model.<CLIP path>
    modules = {key.rsplit(".", 2)[0] for key in tensors if key.endswith((".lora_A.weight", ".lora_B.weight"))}
    alphas = {key.rsplit(".", 1)[0] for key in tensors if key.endswith(".alpha")}
    assert alphas == (modules if family == "flux" else set())
    assert {root for root in roots if any(key.startswith(root) for key in tensors)} == set(roots)  # every component
    assert all(key.startswith(roots) for key in tensors)
    assert all(tensors[key].item() == 4.0 for key in tensors if key.endswith(".alpha"))
    assert len(tensors) - len(alphas) == len(load_file(repo / "model/pytorch_lora_weights.safetensors"))
    with safe_open(str(exported), framework="pt") as file:
        metadata = file.metadata()
    assert (metadata["ss_network_dim"], metadata["ss_network_alpha"], metadata["ss_base_model_version"]) == ("2", alpha, version)

    base, loaded = read_back(reader, base_model, exported, height=32, width=32)
    assert np.abs(expected - base).max() > 0.05
    np.testing.assert_allclose(loaded, expected, atol=1e-4)


def test_formats_a_family_is_not_written_in_are_refused_naming_the_family_and_the_formats(flux_repo, sd3_repo, tmp_path):
    for family, (repo, _, _) in (("flux", flux_repo), ("sd3", sd3_repo)):
        with pytest.raises(ConfigError, match=rf"A {family} LoRA cannot be exported in the kohya format \(kohya's .* layout .*"
                                              rf"--format comfyui.*for {family} tinypipe writes: comfyui, diffusers"):
            export_lora(repo, "kohya", tmp_path / f"{family}.safetensors")
        assert not (tmp_path / f"{family}.safetensors").exists()
