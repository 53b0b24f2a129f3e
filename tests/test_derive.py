"""derive_pipeline: a saved repo with its LoRA, textual-inversion embedding or causal-LM adapter replaced, saved anew."""

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from tinypipe import AutoModelPipeline, ConfigError, RepoError
from tinypipe.config.filelist import sha256_file, verify_filelist
from tinypipe.derive import DERIVED_FROM_NAME, derive_pipeline
from tinypipe.models import (
    TINY_LLAMA,
    TINY_SD,
    CausalLMPipeline,
    DiffusionPipeline,
    builtin_lm_folder,
    builtin_model_folder,
)
from tinypipe.trainers import LoRATrainer

TOKEN = "<cat-toy>"
DIM = 32  # the tiny model's text width
PROMPT = "a photo of sks circle"
SMALL = dict(num_inference_steps=2, height=32, width=32)  # enough to tell LoRAs apart, and quick
LORA_FILE = "model/pytorch_lora_weights.safetensors"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The tiny models gain nothing from intra-op threads, and on a busy machine their spin-waits cost seconds per image."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def randomize(module: torch.nn.Module, seed: int) -> None:
    """Give every LoRA weight random values, so each repo's LoRA visibly changes the output (no training needed)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in module.named_parameters():
            if "lora_" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)


def lora_repo(path, seed: int, rank: int = 4, alpha=None):
    pipeline = DiffusionPipeline(TINY_SD, lora_rank=rank, lora_alpha=alpha)
    randomize(pipeline.unet, seed)
    return pipeline.save_pretrained(path)


def image(repo) -> np.ndarray:
    pipeline = AutoModelPipeline.from_pretrained(repo)
    return np.asarray(pipeline.generate(PROMPT, seed=3, **SMALL)[0], dtype=np.int16)


def file_hashes(repo) -> dict[str, str]:
    return {str(path.relative_to(repo)): sha256_file(path) for path in sorted(repo.rglob("*")) if path.is_file()}


@pytest.fixture(scope="module")
def repos(tmp_path_factory):
    """LoRA repos A and B (rank 4, different seeds) and C (rank 2, alpha 8); A also carries a trainer and training records."""
    root = tmp_path_factory.mktemp("derive")
    a, b, c = lora_repo(root / "a", seed=1), lora_repo(root / "b", seed=2), lora_repo(root / "c", seed=3, rank=2, alpha=8)
    LoRATrainer().save_pretrained(a)
    (a / "validation").mkdir()
    (a / "validation" / "grid.png").write_bytes(b"not really a png")
    (a / "checkpoints" / "checkpoint-2").mkdir(parents=True)
    (a / "checkpoints" / "checkpoint-2" / "complete.json").write_text("{}")
    before = file_hashes(a)
    derived = derive_pipeline(a, root / "a-with-b", lora=b)
    return {"a": a, "b": b, "c": c, "derived": derived, "a_hashes_before": before, "root": root}


@pytest.fixture(scope="module")
def textual_inversion_repo(tmp_path_factory):
    pipeline = DiffusionPipeline(TINY_SD)
    pipeline.load_textual_inversion(torch.randn(2, DIM, generator=torch.Generator().manual_seed(4)), token=TOKEN)
    return pipeline.save_pretrained(tmp_path_factory.mktemp("ti") / "repo")


@pytest.fixture(scope="module")
def adapter_repos(tmp_path_factory):
    """A tinypipe causal-LM repo with a rank-4 adapter, and a plain peft adapter folder (rank 8, other targets)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    root = tmp_path_factory.mktemp("adapters")
    source = CausalLMPipeline(TINY_LLAMA, lora_rank=4)
    randomize(source.model, seed=5)
    source.save_pretrained(root / "source")
    base = AutoModelForCausalLM.from_pretrained(builtin_lm_folder(TINY_LLAMA))
    base.name_or_path = TINY_LLAMA  # recorded as the adapter's base model, as for the built-in model tinypipe loads
    peft_model = get_peft_model(base, LoraConfig(task_type="CAUSAL_LM", r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]))
    randomize(peft_model, seed=6)
    peft_model.save_pretrained(root / "peft_adapter")
    return root / "source", root / "peft_adapter"


# -- replacing a LoRA ---------------------------------------------------------------------------------


def test_derived_repo_generates_the_replacements_images_not_the_sources(repos):
    derived = image(repos["derived"])
    assert np.array_equal(derived, image(repos["b"]))
    assert not np.array_equal(derived, image(repos["a"]))
    assert AutoModelPipeline.from_pretrained(repos["derived"]).config["lora_rank"] == 4


def test_source_repo_is_byte_for_byte_untouched(repos):
    assert file_hashes(repos["a"]) == repos["a_hashes_before"]
    verify_filelist(repos["a"] / "model", use_stamps=False)
    verify_filelist(repos["a"] / "trainer", use_stamps=False)


def test_derived_lora_file_loads_in_plain_diffusers(repos):
    from diffusers import StableDiffusionPipeline

    assert load_file(repos["derived"] / LORA_FILE).keys() == load_file(repos["b"] / LORA_FILE).keys()
    plain = StableDiffusionPipeline.from_pretrained(builtin_model_folder(TINY_SD), safety_checker=None)
    plain.set_progress_bar_config(disable=True)
    plain.load_lora_weights(repos["derived"] / "model")
    result = plain(PROMPT, guidance_scale=7.5, generator=torch.Generator("cpu").manual_seed(3), **SMALL).images[0]
    assert np.array_equal(np.asarray(result, dtype=np.int16), image(repos["derived"]))


def test_derived_repo_records_its_origin_and_copies_no_training_records(repos):
    derived = repos["derived"]
    assert sorted(path.name for path in derived.iterdir()) == [DERIVED_FROM_NAME, "model"]  # no trainer/, validation/, checkpoints/
    provenance = json.loads((derived / DERIVED_FROM_NAME).read_text())
    assert provenance["source"]["path"] == repos["a"].name  # the repo's name, never a local path (the repo is shared)
    assert provenance["source"]["model_filelist_sha256"] == sha256_file(repos["a"] / "model" / "filelist.txt")
    assert provenance["replaced"] == "lora"
    assert provenance["replacements"] == [{"path": f"{repos['b'].name}/{LORA_FILE}", "sha256": sha256_file(repos["b"] / LORA_FILE)}]
    verify_filelist(derived / "model", use_stamps=False)


def test_a_derived_repo_carries_no_local_path(repos):
    local = str(repos["root"].resolve())  # the test's temporary folder, where every input lies
    scanned = [path for path in repos["derived"].rglob("*") if path.is_file() and path.suffix != ".safetensors"]
    assert scanned and [path for path in scanned if local in path.read_text(encoding="utf-8", errors="replace")] == []


def test_a_lora_of_another_rank_and_alpha_replaces_the_old_one(repos, tmp_path):
    derived = derive_pipeline(repos["a"], tmp_path / "a-with-c", lora=repos["c"] / LORA_FILE)  # the file itself
    config = json.loads((derived / "model/config.json").read_text())
    assert (config["lora_rank"], config["lora_alpha"]) == (2, 8)
    with safe_open(str(derived / LORA_FILE), framework="pt") as file:  # the settings diffusers reads back
        metadata = json.loads(file.metadata()["lora_adapter_metadata"])
    assert (metadata["unet.r"], metadata["unet.lora_alpha"]) == (2, 8)
    replacement, result = load_file(repos["c"] / LORA_FILE), load_file(derived / LORA_FILE)
    assert replacement.keys() == result.keys() and all(torch.equal(replacement[key], result[key]) for key in replacement)
    reloaded = AutoModelPipeline.from_pretrained(derived)
    assert reloaded.config["lora_rank"] == 2 and reloaded.unet.peft_config["default"].r == 2


def test_a_lora_is_added_to_a_pipeline_without_one_and_its_tokens_stay(repos, textual_inversion_repo, tmp_path):
    derived = derive_pipeline(textual_inversion_repo, tmp_path / "ti-with-b", lora=repos["b"])
    reloaded = AutoModelPipeline.from_pretrained(derived)
    assert reloaded.has_lora and reloaded.config["textual_inversion_tokens"] == (TOKEN,)
    assert torch.equal(reloaded.textual_inversion_embeddings()[TOKEN], load_file(textual_inversion_repo / "model/learned_embeds.safetensors")[TOKEN])
    result, replacement = load_file(derived / LORA_FILE), load_file(repos["b"] / LORA_FILE)
    assert all(torch.equal(result[key], replacement[key]) for key in replacement)


def test_a_lora_that_does_not_fit_is_refused_and_nothing_is_written(repos, tmp_path):
    weights = load_file(repos["b"] / LORA_FILE)
    key = next(name for name in weights if "lora.down" in name)
    weights[key] = torch.randn(weights[key].shape[0], 2 * weights[key].shape[1])  # trained for a wider model
    (tmp_path / "wide").mkdir()
    from safetensors import safe_open

    with safe_open(str(repos["b"] / LORA_FILE), framework="pt") as file:
        metadata = file.metadata()
    save_file(weights, str(tmp_path / "wide" / "pytorch_lora_weights.safetensors"), metadata=metadata)
    with pytest.raises(RepoError, match=r"wide/pytorch_lora_weights.safetensors does not fit the base model 'tinypipe/tiny-sd'.*size mismatch"):
        derive_pipeline(repos["a"], tmp_path / "out", lora=tmp_path / "wide")
    assert not (tmp_path / "out").exists() and [path.name for path in tmp_path.iterdir()] == ["wide"]

    pipeline = AutoModelPipeline.from_pretrained(repos["a"])  # the method puts the old LoRA back
    before = {key: tensor.clone() for key, tensor in pipeline.lora_state_dicts()["unet"].items()}
    with pytest.raises(RepoError, match="does not fit"):
        pipeline.replace_lora(tmp_path / "wide" / "pytorch_lora_weights.safetensors")
    after = pipeline.lora_state_dicts()["unet"]
    assert pipeline.config["lora_rank"] == 4 and all(torch.equal(before[key], after[key]) for key in before)


def write_kohya_lora(path, text_encoder_layers: tuple[str, ...]) -> None:
    """A kohya-ss style LoRA (`lora_unet_*` / `lora_te_*` keys with `.alpha`): UNet self-attention queries and the given
    text-encoder layers, random values."""
    from diffusers import StableDiffusionPipeline

    plain = StableDiffusionPipeline.from_pretrained(builtin_model_folder(TINY_SD), safety_checker=None)
    generator, rank, tensors = torch.Generator().manual_seed(7), 4, {}
    for prefix, model, layers in (("lora_unet_", plain.unet, ("attn1.to_q",)), ("lora_te_", plain.text_encoder, text_encoder_layers)):
        for name, layer in model.named_modules():
            if name.endswith(layers):
                key = prefix + name.replace(".", "_")
                tensors[f"{key}.lora_down.weight"] = torch.randn(rank, layer.in_features, generator=generator) * 0.3
                tensors[f"{key}.lora_up.weight"] = torch.randn(layer.out_features, rank, generator=generator) * 0.3
                tensors[f"{key}.alpha"] = torch.tensor(float(rank))
    save_file(tensors, str(path))


@pytest.mark.parametrize("text_encoder_layers", [("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj",
                                                  "mlp.fc1", "mlp.fc2"), ("mlp.fc1", "mlp.fc2")], ids=["attention-and-mlp", "mlp-only"])
def test_kohya_lora_with_text_encoder_mlp_is_kept_exactly_by_derive(repos, tmp_path, text_encoder_layers):
    from diffusers import StableDiffusionPipeline

    write_kohya_lora(tmp_path / "kohya.safetensors", text_encoder_layers)
    plain = StableDiffusionPipeline.from_pretrained(builtin_model_folder(TINY_SD), safety_checker=None)
    plain.set_progress_bar_config(disable=True)
    plain.load_lora_weights(tmp_path, weight_name="kohya.safetensors")
    expected = plain(PROMPT, guidance_scale=7.5, generator=torch.Generator("cpu").manual_seed(3), **SMALL).images[0]

    derived = derive_pipeline(repos["a"], tmp_path / "out", lora=tmp_path / "kohya.safetensors")
    reloaded = AutoModelPipeline.from_pretrained(derived)
    assert {"fc1", "fc2"} <= {name.rsplit(".", 1)[-1] for name in reloaded.config["text_encoder_lora_target_modules"]}
    assert np.array_equal(image(derived), np.asarray(expected, dtype=np.int16))
    plain.unload_lora_weights()
    plain.load_lora_weights(derived / "model")  # the written file reads back in plain diffusers, MLP layers included
    assert {"fc1", "fc2"} <= {name.rsplit(".", 1)[-1] for config in plain.text_encoder.peft_config.values()
                              for name in config.target_modules}


# -- replacing a textual-inversion embedding ----------------------------------------------------------


def write_embedding(folder, layout: str, vectors: torch.Tensor):
    """The embedding in one of the layouts users have: a diffusers file, an A1111 .pt, or a tinypipe repo."""
    folder.mkdir()
    if layout == "safetensors":
        save_file({TOKEN: vectors}, str(folder / "learned_embeds.safetensors"))
        return folder / "learned_embeds.safetensors"
    if layout == "a1111":
        torch.save({"string_to_param": {"*": vectors}, "name": TOKEN, "step": 100}, folder / "cat-toy.pt")
        return folder / "cat-toy.pt"
    pipeline = DiffusionPipeline(TINY_SD)
    pipeline.load_textual_inversion(vectors, token=TOKEN)
    return pipeline.save_pretrained(folder / "repo")


@pytest.mark.parametrize("layout, count", [("safetensors", 1), ("a1111", 3), ("repo", 2)])
def test_embedding_replaces_the_tokens_vectors(textual_inversion_repo, tmp_path, layout, count):
    vectors = torch.randn(count, DIM, generator=torch.Generator().manual_seed(7))
    derived = derive_pipeline(textual_inversion_repo, tmp_path / "out", embedding=write_embedding(tmp_path / "new", layout, vectors))
    saved = load_file(derived / "model/learned_embeds.safetensors")
    assert list(saved) == [TOKEN] and torch.equal(saved[TOKEN], vectors)
    reloaded = AutoModelPipeline.from_pretrained(derived)
    assert reloaded.config["textual_inversion_tokens"] == (TOKEN,)
    assert torch.equal(reloaded.textual_inversion_embeddings()[TOKEN], vectors)
    names = [TOKEN] + [f"{TOKEN}_{index}" for index in range(1, 4)]
    assert [name in reloaded.tokenizer.get_vocab() for name in names] == [index < count for index in range(4)]  # no leftover rows
    assert json.loads((derived / DERIVED_FROM_NAME).read_text())["replaced"] == "embedding"


def test_derived_embedding_loads_in_plain_diffusers(textual_inversion_repo, tmp_path):
    from diffusers import StableDiffusionPipeline

    vectors = torch.randn(1, DIM)
    save_file({TOKEN: vectors}, str(tmp_path / "learned_embeds.safetensors"))
    derived = derive_pipeline(textual_inversion_repo, tmp_path / "out", embedding=tmp_path)  # a folder holding the file
    plain = StableDiffusionPipeline.from_pretrained(builtin_model_folder(TINY_SD), safety_checker=None)
    plain.load_textual_inversion(derived / "model")
    ids = plain.tokenizer.convert_tokens_to_ids([TOKEN])
    assert plain.tokenizer.unk_token_id not in ids
    assert torch.equal(plain.text_encoder.get_input_embeddings().weight[ids].detach(), vectors)


def test_embedding_is_added_to_a_pipeline_without_tokens(repos, tmp_path):
    vectors = torch.randn(2, DIM)
    save_file({TOKEN: vectors}, str(tmp_path / "learned_embeds.safetensors"))
    derived = derive_pipeline(repos["b"], tmp_path / "out", embedding=tmp_path / "learned_embeds.safetensors")
    reloaded = AutoModelPipeline.from_pretrained(derived)
    assert reloaded.has_lora and torch.equal(reloaded.textual_inversion_embeddings()[TOKEN], vectors)


def test_embedding_for_another_token_needs_placeholder_token(textual_inversion_repo, tmp_path):
    vectors = torch.randn(1, DIM)
    save_file({"<dog-toy>": vectors}, str(tmp_path / "dog.safetensors"))
    with pytest.raises(ConfigError, match=r"token '<dog-toy>'.*\['<cat-toy>'\].*pass placeholder_token='<cat-toy>' "
                                          r"\(tinypipe derive --placeholder-token '<cat-toy>'\)"):
        derive_pipeline(textual_inversion_repo, tmp_path / "out", embedding=tmp_path / "dog.safetensors")
    derived = derive_pipeline(textual_inversion_repo, tmp_path / "out", embedding=tmp_path / "dog.safetensors", placeholder_token=TOKEN)
    assert torch.equal(load_file(derived / "model/learned_embeds.safetensors")[TOKEN], vectors)


def test_derive_command_renames_an_embedding_with_the_option_its_error_advises(textual_inversion_repo, tmp_path, capsys):
    from tinypipe.cli import main

    vectors = torch.randn(1, DIM)
    torch.save({"<dog-toy>": vectors}, tmp_path / "learned_embeds.bin")  # sd-concepts-library layout
    command = ["derive", str(textual_inversion_repo), str(tmp_path / "out"), "--embedding", str(tmp_path / "learned_embeds.bin")]
    assert main(command) == 2
    advised = capsys.readouterr().err.split("(tinypipe derive ")[1].split(")")[0].split()  # ['--placeholder-token', "'<cat-toy>'"]
    assert main(command + [advised[0], advised[1].strip("'")]) == 0
    assert torch.equal(load_file(tmp_path / "out/model/learned_embeds.safetensors")[TOKEN], vectors)


def test_embedding_of_another_width_is_refused_and_the_token_kept(textual_inversion_repo, tmp_path):
    save_file({TOKEN: torch.randn(1, 768)}, str(tmp_path / "sd15.safetensors"))
    with pytest.raises(ConfigError, match=r"shape \[1, 768\]; this text encoder needs \[num_vectors, 32\]"):
        derive_pipeline(textual_inversion_repo, tmp_path / "out", embedding=tmp_path / "sd15.safetensors")
    assert not (tmp_path / "out").exists()


# -- replacing a causal-LM adapter --------------------------------------------------------------------


def test_adapter_is_replaced_and_loads_in_peft(adapter_repos, tmp_path):
    from peft import PeftModel
    from peft.utils import get_peft_model_state_dict
    from transformers import AutoModelForCausalLM

    source, replacement = adapter_repos
    before = file_hashes(source)
    derived = derive_pipeline(source, tmp_path / "out", adapter=replacement)
    expected, saved = load_file(replacement / "adapter_model.safetensors"), load_file(derived / "model/adapter_model.safetensors")
    assert expected.keys() == saved.keys() and all(torch.equal(expected[key], saved[key]) for key in expected)
    settings = json.loads((derived / "model/adapter_config.json").read_text())
    assert (settings["r"], settings["lora_alpha"], sorted(settings["target_modules"])) == (8, 16, ["q_proj", "v_proj"])

    peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(builtin_lm_folder(TINY_LLAMA)), derived / "model")
    loaded = get_peft_model_state_dict(peft_model)
    assert all(torch.equal(loaded[key], expected[key]) for key in expected)
    assert AutoModelPipeline.from_pretrained(derived).config["lora_rank"] == 8
    replaced = json.loads((derived / DERIVED_FROM_NAME).read_text())["replacements"]
    assert replaced == [{"path": f"{replacement.name}/adapter_model.safetensors", "sha256": sha256_file(replacement / "adapter_model.safetensors")}]
    assert file_hashes(source) == before
    verify_filelist(source / "model", use_stamps=False)


def test_adapter_from_a_tinypipe_repo(adapter_repos, tmp_path):
    source, replacement = adapter_repos
    other = CausalLMPipeline(TINY_LLAMA)
    other.load_adapter(replacement)
    other.save_pretrained(tmp_path / "other")
    derived = derive_pipeline(source, tmp_path / "out", adapter=tmp_path / "other")
    assert load_file(derived / "model/adapter_model.safetensors").keys() == load_file(replacement / "adapter_model.safetensors").keys()


def test_adapter_made_for_another_base_model_needs_allow_other_base(adapter_repos, tmp_path):
    source, replacement = adapter_repos
    shutil.copytree(replacement, tmp_path / "adapter")
    settings = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    (tmp_path / "adapter" / "adapter_config.json").write_text(json.dumps({**settings, "base_model_name_or_path": "someone/other-llama"}))
    with pytest.raises(RepoError, match=r"'someone/other-llama'.*'tinypipe/tiny-llama'.*--allow-other-base"):
        derive_pipeline(source, tmp_path / "out", adapter=tmp_path / "adapter")
    assert not (tmp_path / "out").exists()
    derived = derive_pipeline(source, tmp_path / "out", adapter=tmp_path / "adapter", allow_other_base=True)
    assert AutoModelPipeline.from_pretrained(derived).config["lora_rank"] == 8


def test_an_adapter_that_does_not_fit_keeps_the_old_one(adapter_repos, tmp_path):
    source, replacement = adapter_repos
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "adapter_config.json").write_text((replacement / "adapter_config.json").read_text())
    weights = load_file(replacement / "adapter_model.safetensors")
    key = next(name for name in weights if "lora_A" in name)
    weights[key] = torch.randn(8, 3)
    save_file(weights, str(tmp_path / "bad" / "adapter_model.safetensors"))
    pipeline = AutoModelPipeline.from_pretrained(source)
    before = {key: tensor.clone() for key, tensor in pipeline.adapter_state_dict().items()}
    with pytest.raises(RepoError, match=r"bad/adapter_model.safetensors does not match the base model .*wrong shape"):
        pipeline.replace_adapter(tmp_path / "bad")
    after = pipeline.adapter_state_dict()
    assert pipeline.config["lora_rank"] == 4 and before.keys() == after.keys()
    assert all(torch.equal(before[key], after[key]) for key in before)


# -- bad input ----------------------------------------------------------------------------------------


def test_bad_arguments_are_clear_errors_before_anything_loads(repos, tmp_path):
    a, b = repos["a"], repos["b"]
    with pytest.raises(ConfigError, match=r"exactly one component: give one of lora=, embedding= or adapter= \(got none\)"):
        derive_pipeline(a, tmp_path / "out")
    with pytest.raises(ConfigError, match=r"exactly one.*got \['embedding', 'lora'\]"):
        derive_pipeline(a, tmp_path / "out", lora=b, embedding=b)
    with pytest.raises(ConfigError, match="is the source repo or inside it"):
        derive_pipeline(a, a, lora=b)
    with pytest.raises(ConfigError, match="is the source repo or inside it"):
        derive_pipeline(a, a / "model" / "derived", lora=b)
    with pytest.raises(ConfigError, match="already exists and is not an empty folder"):
        derive_pipeline(a, b, lora=repos["c"])
    with pytest.raises(ConfigError, match=r"lora='.*missing.safetensors' does not exist; give the pytorch_lora_weights.safetensors"):
        derive_pipeline(a, tmp_path / "out", lora=tmp_path / "missing.safetensors")
    with pytest.raises(ConfigError, match="holds no learned_embeds.safetensors"):
        derive_pipeline(a, tmp_path / "out", embedding=b)
    with pytest.raises(ConfigError, match="placeholder_token .* goes with embedding="):
        derive_pipeline(a, tmp_path / "out", lora=b, placeholder_token=TOKEN)
    assert not (tmp_path / "out").exists()


def test_replacements_of_the_wrong_kind_are_refused(repos, adapter_repos, tmp_path):
    source_lm, peft_adapter = adapter_repos
    with pytest.raises(ConfigError, match=r"holds no adapter_model.safetensors .*looks like a diffusion LoRA \(use lora=\)"):
        derive_pipeline(source_lm, tmp_path / "out", adapter=repos["b"])
    with pytest.raises(ConfigError, match=r"holds no pytorch_lora_weights.safetensors.*looks like a causal-LM adapter \(use adapter=\)"):
        derive_pipeline(repos["a"], tmp_path / "out", lora=peft_adapter)
    with pytest.raises(ConfigError, match=r"holds a CausalLMPipeline, and lora= replaces a component of a DiffusionPipeline; give this pipeline adapter="):
        derive_pipeline(source_lm, tmp_path / "out", lora=repos["b"])
    with pytest.raises(ConfigError, match=r"holds a DiffusionPipeline, and adapter= replaces a component of a CausalLMPipeline"):
        derive_pipeline(repos["a"], tmp_path / "out", adapter=peft_adapter)
    save_file({TOKEN: torch.randn(1, DIM)}, str(tmp_path / "learned_embeds.safetensors"))
    with pytest.raises(ConfigError, match="holds a CausalLMPipeline, and embedding="):
        derive_pipeline(source_lm, tmp_path / "out", embedding=tmp_path / "learned_embeds.safetensors")
    assert not (tmp_path / "out").exists()


def test_an_altered_replacement_repo_is_refused(repos, tmp_path):
    altered = shutil.copytree(repos["c"], tmp_path / "altered")
    weights = altered / LORA_FILE
    weights.write_bytes(weights.read_bytes()[:-1] + b"\0")
    with pytest.raises(RepoError, match="pytorch_lora_weights.safetensors has changed since it was saved"):
        derive_pipeline(repos["a"], tmp_path / "out", lora=altered)
