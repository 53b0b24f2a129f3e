"""Tests for `tinypipe.models.lora_targets`: every LoRA target name must match a module, as peft alone does not check."""

import pytest
import torch

from tinypipe import ConfigError
from tinypipe.models.lora_targets import check_target_modules, unmatched_target_modules


class Attention(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.q_proj, self.v_proj = torch.nn.Linear(4, 4), torch.nn.Linear(4, 4)
        self.to_out = torch.nn.ModuleList([torch.nn.Linear(4, 4)])


def model() -> torch.nn.Module:
    return torch.nn.Sequential(Attention(), Attention())


def test_a_typo_next_to_a_correct_name_is_refused_with_the_closest_name():
    with pytest.raises(ConfigError, match=r"target_modules: \['v_projj'\] match no module of the model; .*"
                                          r"Did you mean: 'v_projj' -> 'v_proj'\?"):
        check_target_modules(model(), ("q_proj", "v_projj"), setting="target_modules", model_name="the model")


def test_names_match_a_full_name_or_its_ending_after_a_dot_and_patterns_are_not_checked():
    assert unmatched_target_modules(model(), ("q_proj", "0.v_proj", "to_out.0", "proj")) == ["proj"]
    assert unmatched_target_modules(model(), "all-linear") == []
    check_target_modules(model(), ("q_proj", "to_out.0"), setting="target_modules", model_name="the model")  # no error


def test_the_message_lists_existing_modules_and_the_alternative():
    with pytest.raises(ConfigError, match=r"include \['q_proj', 'v_proj', 'to_out.0'\]; pick from them or 'all-linear'\."):
        check_target_modules(model(), ("c_attn",), setting="target_modules", model_name="the model", alternative="or 'all-linear'")
