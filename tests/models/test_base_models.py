"""Tests for `tinypipe.models.base_models`: what a base-model name points to, and when two names mean one model."""

from pathlib import Path

import pytest

from tinypipe import ConfigError
from tinypipe.builtin.tiny_llama import TINY_LLAMA, builtin_lm_folder
from tinypipe.models.base_models import base_model_source, same_base_model


def test_a_built_in_name_and_its_folder_are_the_same_base_model():
    assert same_base_model(TINY_LLAMA, TINY_LLAMA)
    assert same_base_model(TINY_LLAMA, str(builtin_lm_folder(TINY_LLAMA)))
    assert not same_base_model(TINY_LLAMA, "someone/other-llama")


def test_a_name_resolves_to_a_built_in_folder_a_local_folder_or_the_hub_id(tmp_path):
    assert base_model_source(TINY_LLAMA, "causal-lm") == Path(builtin_lm_folder(TINY_LLAMA))
    assert base_model_source("someone/some-model", "diffusion") == "someone/some-model"
    (tmp_path / "model_index.json").write_text("{}")
    assert base_model_source(str(tmp_path), "diffusion") == tmp_path


def test_a_local_folder_of_the_wrong_kind_names_the_file_it_lacks(tmp_path):
    with pytest.raises(ConfigError, match=r"is not a transformers model folder \(no config.json\); .*'tinypipe/tiny-llama'"):
        base_model_source(str(tmp_path), "causal-lm")
    with pytest.raises(ConfigError, match=r"is not a diffusers pipeline folder \(no model_index.json\); .*'tinypipe/tiny-sd'"):
        base_model_source(str(tmp_path), "diffusion")


def test_an_unknown_base_model_names_the_closest_built_in_and_no_unseen_stacktrace():
    from tinypipe.models import DiffusionPipeline

    with pytest.raises(ConfigError) as raised:
        DiffusionPipeline("tinypipe/tiny-sdd")
    assert "Did you mean 'tinypipe/tiny-sd'?" in str(raised.value) and "stacktrace" not in str(raised.value)


def test_a_typo_of_one_builtin_name_suggests_only_the_closest_among_names_sharing_a_prefix():
    from tinypipe.models.base_models import builtin_hint

    hint = builtin_hint("tinypipe/tiny-fluxx", "diffusion")

    assert hint.startswith("Did you mean 'tinypipe/tiny-flux'? The built-in models are ")
    assert "'tinypipe/tiny-sd'" in hint and "'tinypipe/tiny-flux-schnell'" in hint
