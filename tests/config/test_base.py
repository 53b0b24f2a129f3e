"""tinypipe.config.base: the one unknown-key check, used by configs, trainer methods and --training-args."""

import pytest

from tinypipe.config.base import check_unknown_keys
from tinypipe.errors import ConfigError


def test_known_keys_pass():
    check_unknown_keys({"lr": 1, "steps": 2}, ["lr", "steps", "seed"], "Trainer", "keys")


def test_unknown_keys_are_all_named_with_the_valid_ones_and_the_closest_to_each_typo():
    with pytest.raises(ConfigError, match=r"^Trainer: unknown config keys \['epochz', 'lrr'\]; valid keys are \['lr', 'steps'\]\. "
                                          r"Did you mean 'lr' for 'lrr'\?$"):
        check_unknown_keys(["lrr", "steps", "epochz"], ("steps", "lr"), "Trainer", "config keys")


def test_unknown_arguments_of_a_call_are_named():
    with pytest.raises(ConfigError, match=r"Trainer.train\(\): unknown arguments \['epochs'\]; valid ones are \['epoch'\]"):
        check_unknown_keys({"epochs": 3}, ["epoch"], "Trainer.train()", "arguments")
