"""The denoising fine-tune LoRATrainer and DreamBoothTrainer share (`training/denoising_loop.py`): its settings check.

What it trains is proven through both recipes (tests/trainers/test_lora*.py, test_dreambooth.py); here, the rule of
prior preservation they share."""

import logging

import pytest

from tinypipe.errors import ConfigError
from tinypipe.training.denoising_loop import check_prior_preservation

OFF = dict(with_prior_preservation=False, class_prompt=None, class_data_dir=None)


def test_prior_preservation_needs_a_class_prompt():
    with pytest.raises(ConfigError, match="class_prompt"):
        check_prior_preservation({**OFF, "with_prior_preservation": True})
    check_prior_preservation({**OFF, "with_prior_preservation": True, "class_prompt": "a photo of a dog"})


def test_class_settings_without_prior_preservation_are_said_to_be_unused(caplog):
    with caplog.at_level(logging.WARNING, logger="tinypipe"):
        check_prior_preservation(OFF)
        assert not caplog.records
        check_prior_preservation({**OFF, "class_prompt": "a photo of a dog"})
    assert "with_prior_preservation is False; they are not used" in caplog.records[-1].getMessage()
