"""Loading existing textual-inversion embeddings into a DiffusionPipeline (seed 004): every layout, and bad files."""

import os

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from tinypipe import AutoModelPipeline, ConfigError
from tinypipe.models import DiffusionPipeline

DIM = 32  # the tiny model's text width


@pytest.fixture
def pipeline():
    return DiffusionPipeline("tinypipe/tiny-sd")


def rows(pipeline: DiffusionPipeline, token: str, count: int) -> torch.Tensor:
    names = [token] + [f"{token}_{index}" for index in range(1, count)]
    return pipeline.text_encoder.get_input_embeddings().weight[pipeline.tokenizer.convert_tokens_to_ids(names)].detach()


def test_diffusers_safetensors(pipeline, tmp_path):
    vectors = torch.randn(1, DIM)
    save_file({"<cat-toy>": vectors}, str(tmp_path / "learned_embeds.safetensors"))
    assert pipeline.load_textual_inversion(tmp_path / "learned_embeds.safetensors") == "<cat-toy>"
    assert pipeline.tokenizer.tokenize("a <cat-toy>") == ["a</w>", "<cat-toy>"]
    assert torch.equal(rows(pipeline, "<cat-toy>", 1), vectors)


def test_legacy_bin_with_a_one_dimensional_vector(pipeline, tmp_path):
    vector = torch.randn(DIM)  # the seed's {"<watercolor-portrait>": tensor[768]} layout
    torch.save({"<watercolor>": vector}, tmp_path / "learned_embeds.bin")
    assert pipeline.load_textual_inversion(str(tmp_path / "learned_embeds.bin")) == "<watercolor>"
    assert torch.equal(rows(pipeline, "<watercolor>", 1)[0], vector)


def test_a1111_pt_with_two_vectors(pipeline, tmp_path):
    vectors = torch.randn(2, DIM)
    torch.save({"string_to_token": {"*": 265}, "string_to_param": {"*": vectors}, "name": "<a1111-style>", "step": 3000,
                "sd_checkpoint": "a9263745", "sd_checkpoint_name": "v1-5"}, tmp_path / "style.pt")
    assert pipeline.load_textual_inversion(tmp_path / "style.pt") == "<a1111-style>"
    assert torch.equal(rows(pipeline, "<a1111-style>", 2), vectors)
    # The prompt token expands to both vectors, as in diffusers.
    images = pipeline.generate("a painting in the style of <a1111-style>", num_inference_steps=2)
    assert len(images) == 1


def test_a1111_token_can_be_renamed(pipeline, tmp_path):
    torch.save({"string_to_param": {"*": torch.randn(1, DIM)}, "name": "old"}, tmp_path / "style.pt")
    assert pipeline.load_textual_inversion(tmp_path / "style.pt", token="<renamed>") == "<renamed>"


def test_bare_tensor_needs_an_explicit_token(pipeline, tmp_path):
    vectors = torch.randn(3, DIM)
    with pytest.raises(ConfigError, match="token="):
        pipeline.load_textual_inversion(vectors)
    assert pipeline.load_textual_inversion(vectors, token="<bare>") == "<bare>"
    assert torch.equal(rows(pipeline, "<bare>", 3), vectors)
    torch.save(torch.randn(DIM), tmp_path / "bare.pt")
    assert pipeline.load_textual_inversion(tmp_path / "bare.pt", token="<bare-file>") == "<bare-file>"


def test_fp16_tensors_are_cast_to_the_text_encoder_dtype(pipeline, tmp_path):
    vectors = torch.randn(1, DIM).half()
    save_file({"<half>": vectors}, str(tmp_path / "half.safetensors"))
    pipeline.load_textual_inversion(tmp_path / "half.safetensors")
    loaded = rows(pipeline, "<half>", 1)
    assert loaded.dtype == torch.float32 and torch.equal(loaded, vectors.float())


def test_two_keys_are_a_clear_error(pipeline, tmp_path):
    save_file({"<a>": torch.randn(1, DIM), "<b>": torch.randn(1, DIM)}, str(tmp_path / "two.safetensors"))
    with pytest.raises(ConfigError, match="holds 2 keys"):
        pipeline.load_textual_inversion(tmp_path / "two.safetensors")


def test_wrong_dimension_is_a_clear_error(pipeline, tmp_path):
    save_file({"<sd15>": torch.randn(1, 768)}, str(tmp_path / "sd15.safetensors"))
    with pytest.raises(ConfigError, match=r"\[num_vectors, 32\]"):
        pipeline.load_textual_inversion(tmp_path / "sd15.safetensors")
    assert "<sd15>" not in pipeline.tokenizer.get_vocab()  # nothing half-added


def test_known_token_is_refused(pipeline):
    with pytest.raises(ConfigError, match="already known"):
        pipeline.load_textual_inversion(torch.randn(DIM), token="circle")
    pipeline.load_textual_inversion(torch.randn(DIM), token="<once>")
    with pytest.raises(ConfigError, match="already known"):
        pipeline.load_textual_inversion(torch.randn(DIM), token="<once>")


class _Payload:
    """Unpickling this would create a folder: proof that code ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


@pytest.mark.parametrize("name", ["learned_embeds.bin", "evil.pt"])
def test_a_pickle_payload_never_runs(pipeline, tmp_path, name):
    marker = str(tmp_path / "code-ran")
    torch.save({"<evil>": _Payload(marker)}, tmp_path / name)
    with pytest.raises(ConfigError, match="weights_only=True"):
        pipeline.load_textual_inversion(tmp_path / name)
    assert not os.path.exists(marker)


def test_pipeline_with_tokens_saves_and_reloads(pipeline, tmp_path):
    first, second = torch.randn(2, DIM), torch.randn(1, DIM)
    pipeline.load_textual_inversion(first, token="<one>")
    pipeline.load_textual_inversion(second, token="<two>")
    pipeline.save_pretrained(tmp_path / "repo")
    assert {path.name for path in (tmp_path / "repo/model").iterdir()} >= {"learned_embeds.safetensors", "learned_embeds-2.safetensors"}
    reloaded = AutoModelPipeline.from_pretrained(tmp_path / "repo")
    assert reloaded.config["textual_inversion_tokens"] == ("<one>", "<two>")
    assert torch.equal(rows(reloaded, "<one>", 2), first) and torch.equal(rows(reloaded, "<two>", 1), second)
    prompt = dict(num_inference_steps=2, seed=1)
    assert np.array_equal(np.asarray(reloaded.generate("a <one> and a <two>", **prompt)[0]),
                          np.asarray(pipeline.generate("a <one> and a <two>", **prompt)[0]))
    with pytest.raises(ConfigError, match="from_pretrained"):
        DiffusionPipeline.from_config(pipeline.config)
