"""The shared training arguments, declared once (`training/arguments.py`): their types keep the caller-wins rule,
their doc lines reach every recipe's docstring and the command line's help."""

import inspect
from typing import Optional

import pytest

from tinypipe.cli import build_parser
from tinypipe.config import TrainerConfigMixin, save_config, set_from_config
from tinypipe.trainers import CausalLMTrainer, DreamBoothTrainer, LoRATrainer, TextualInversionTrainer
from tinypipe.training import arguments as shared

RECIPES = (LoRATrainer, DreamBoothTrainer, TextualInversionTrainer, CausalLMTrainer)


def documented(trainer: type) -> dict[str, str]:
    """Parameter name -> its entry in the Args section of `trainer.train`'s docstring."""
    doc = trainer.train.__doc__
    args = doc[doc.index("\nArgs:\n"):doc.index("\nReturns:")]
    entries = {}
    for line in args.splitlines()[2:]:
        if line.startswith("    ") and not line.startswith("        ") and ":" in line:
            names, _, text = line.strip().partition(":")
            for name in names.split(","):
                entries[name.strip().strip("`")] = text.strip()
    return entries


@pytest.mark.parametrize("trainer", RECIPES, ids=lambda trainer: trainer.__name__)
def test_every_train_argument_of_every_recipe_is_documented(trainer):
    parameters = [name for name in inspect.signature(trainer.train).parameters if name != "self"]
    entries = documented(trainer)
    assert [name for name in parameters if name not in entries] == []


def test_a_shared_argument_is_documented_by_its_one_line_with_the_recipes_own_default():
    line = shared.argument_doc("learning_rate")
    assert documented(LoRATrainer)["learning_rate"] == f"{line} Default: 0.0005."
    assert documented(CausalLMTrainer)["learning_rate"] == f"{line} Default: 0.0003."
    assert documented(TextualInversionTrainer)["seed"] == documented(CausalLMTrainer)["seed"] == f"{shared.argument_doc('seed')} Default: 0."


def test_a_recipe_describes_a_shared_argument_in_its_own_words_where_it_differs():
    # DreamBooth picks diffusers' learning rate for what trains; its docstring says so instead of the shared line.
    assert documented(DreamBoothTrainer)["learning_rate"].startswith("Peak learning rate; by default diffusers' defaults")
    assert "Default:" not in documented(DreamBoothTrainer)["learning_rate"]


def test_the_shared_types_keep_the_caller_wins_rule():
    class Trainer(TrainerConfigMixin):
        @save_config
        def __init__(self):
            pass

        @set_from_config(aliases={"epoch": "num_train_epochs"})
        def train(self, learning_rate: shared.LearningRate = 1.0, num_train_epochs: shared.NumTrainEpochs = 1,
                  epoch: shared.Epoch = None, max_train_steps: Optional[shared.MaxTrainSteps] = None):
            return learning_rate, epoch if epoch is not None else num_train_epochs, max_train_steps

    trainer = Trainer()
    trainer.set_method_config("train_config", {"learning_rate": 0.5, "num_train_epochs": 3, "max_train_steps": 7})
    assert trainer.train() == (0.5, 3, 7)  # the saved config fills what the caller leaves out
    assert trainer.train(learning_rate=0.1, epoch=2) == (0.1, 2, 7)  # the caller wins, through the alias too


def test_document_shared_arguments_needs_args_and_returns_sections():
    def train(seed: shared.Seed = 0):
        """Train."""

    with pytest.raises(TypeError, match="needs a docstring with Args: and Returns:"):
        shared.document_shared_arguments(train)


def test_the_command_line_help_lists_the_shared_arguments_from_the_same_table(capsys):
    for command, diffusion in (("train-lm", False), ("train-diffuser", True)):
        with pytest.raises(SystemExit):
            build_parser().parse_args([command, "--help"])
        help_text = " ".join(capsys.readouterr().out.split())
        assert f"learning_rate {shared.argument_doc('learning_rate')}" in help_text
        assert f"max_grad_norm {shared.argument_doc('max_grad_norm')}" in help_text
        assert (f"prior_loss_weight {shared.argument_doc('prior_loss_weight')}" in help_text) == diffusion
        assert "output_dir " not in help_text  # given as --output
