"""Pieces of the causal-LM recipe (`training/causal_lm_steps.py`): the validation split and the token losses."""

import pytest
import torch

from tinypipe.builtin.tiny_llama import TINY_LLAMA
from tinypipe.data.instructions import IGNORE_INDEX, TokenizedExample, collate, pack
from tinypipe.errors import ConfigError
from tinypipe.models.causal_lm import CausalLMPipeline
from tinypipe.training import causal_lm_steps as lm_steps


def test_the_validation_split_is_seeded_keeps_the_order_and_leaves_training_examples():
    examples = list(range(10))
    train, held_out = lm_steps.hold_out(examples, 0.2, seed=1)
    assert len(held_out) == 2 and sorted(train + held_out) == examples and train == sorted(train)
    assert lm_steps.hold_out(examples, 0.2, seed=1) == (train, held_out)
    with pytest.raises(ConfigError, match="validation_split=0.5 leaves no training examples out of 1; lower it"):
        lm_steps.hold_out([0], 0.5, seed=1)


def test_only_tokens_with_a_label_after_the_first_are_learned():
    example = TokenizedExample(input_ids=[1, 2, 3, 4], labels=[5, IGNORE_INDEX, 3, 4], prompt_length=2, truncated=False)
    assert lm_steps.learned_tokens(example) == 2  # the first token is never predicted


def test_the_summed_loss_over_the_learned_tokens_is_their_mean_times_their_count():
    class Logits(torch.nn.Module):
        def forward(self, input_ids, attention_mask=None, use_cache=False):
            return type("Output", (), {"logits": torch.nn.functional.one_hot(input_ids, 6).float() * 2})()

    batch = {"input_ids": torch.tensor([[1, 2, 3, 0]]), "attention_mask": torch.ones(1, 4, dtype=torch.long),
             "labels": torch.tensor([[IGNORE_INDEX, 2, IGNORE_INDEX, 4]])}
    loss_sum, tokens = lm_steps.summed_loss(Logits(), batch)
    logits = Logits()(batch["input_ids"]).logits[0]
    expected = torch.nn.functional.cross_entropy(logits[[0, 2]], torch.tensor([2, 4]), reduction="mean")
    assert tokens == 2 and torch.allclose(loss_sum / tokens, expected)


@pytest.mark.parametrize("make_batch", [collate, pack], ids=["padded", "packed"])
def test_the_loss_from_the_learned_positions_logits_is_the_loss_of_every_positions_logits(make_batch):
    # Only positions that predict a learned token get logits (logits_to_keep): same loss, same LoRA gradients.
    pipeline = CausalLMPipeline(TINY_LLAMA, lora_rank=4, lora_dropout=0.0)
    model = pipeline.model
    examples = [TokenizedExample(input_ids=[5, 6, 7, 8, 9, 10], labels=[IGNORE_INDEX] * 3 + [8, 9, 10], prompt_length=3,
                                 truncated=False),
                TokenizedExample(input_ids=[11, 12, 13, 14], labels=[IGNORE_INDEX] * 2 + [13, 14], prompt_length=2,
                                 truncated=False)]
    batch = make_batch(examples, pipeline.tokenizer.pad_token_id)
    widths = []
    head = model.get_output_embeddings().register_forward_hook(lambda module, args, out: widths.append(args[0].shape[1]))
    loss_sum, tokens = lm_steps.summed_loss(model, batch)
    head.remove()
    lora = [parameter for name, parameter in model.named_parameters() if "lora_" in name]
    gradients = torch.autograd.grad(loss_sum, lora)

    inputs = {key: value for key, value in batch.items() if key != "labels"}
    logits = model(**inputs, use_cache=False).logits  # every position, as a plain training loop computes them
    targets = batch["labels"][:, 1:]
    expected = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), targets.reshape(-1),
                                                 ignore_index=IGNORE_INDEX, reduction="sum")
    assert tokens == 5 and widths[0] < batch["input_ids"].shape[1] - 1  # fewer positions than a plain loop's
    assert torch.allclose(loss_sum, expected, rtol=1e-5, atol=1e-5)
    for ours, theirs in zip(gradients, torch.autograd.grad(expected, lora)):
        assert torch.allclose(ours, theirs, rtol=1e-4, atol=1e-6)
