"""Small pieces of the causal-LM recipe (`CausalLMTrainer`): the adapter's settings, the validation split, the
preflight check of the data, the summed token loss and the eval loss, and the probe that decides packing.

Each is a plain function, as `diffusion_steps.py` is for the diffusion recipes.
"""

import functools
import inspect
import logging
import random
from typing import Any, Optional, Sequence, Union

import torch

from ..data.instructions import IGNORE_INDEX, TokenizedExample, collate, length_grouped_batches, render_loss_mask
from ..data.token_cache import TokenizedExamples
from ..errors import ConfigError, TrainingError
from ..models.causal_lm import CausalLMPipeline
from .settings import check_existing_lora

logger = logging.getLogger(__name__)

__all__ = ["resolve_adapter_settings", "hold_out", "preflight", "log_data_summary", "summed_loss", "learned_tokens", "example_lengths", "total_learned_tokens",
           "evaluation_loss", "packing_isolates_examples"]


def hold_out(examples: list, validation_split: float, seed: int) -> tuple[list, list]:
    """Split `examples` into training and validation examples: a seeded `validation_split` fraction (at least one) held out.

    Returns:
        `(training examples, validation examples)`, each in the order of `examples`.

    Raises:
        ConfigError: The split would leave no training example.
    """
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    held_out = set(order[:max(1, round(len(examples) * validation_split))])
    if len(held_out) >= len(examples):
        raise ConfigError(f"validation_split={validation_split} leaves no training examples out of {len(examples)}; lower it.")
    return ([example for index, example in enumerate(examples) if index not in held_out],
            [example for index, example in enumerate(examples) if index in held_out])


def log_data_summary(train_set: list[TokenizedExample], validation_set: list[TokenizedExample], source: Any,
                     max_length: int) -> None:
    """A DEBUG record of the training data: counts, where it came from, tokens, learned tokens, the longest example."""
    if logger.isEnabledFor(logging.DEBUG):
        logger.debug("Data: %d training and %d validation examples (first %s); %d tokens, %d of them learned, longest "
                     "example %d tokens (max_length %d).", len(train_set), len(validation_set), source,
                     sum(len(example.input_ids) for example in train_set),
                     sum(learned_tokens(example) for example in train_set),
                     max(len(example.input_ids) for example in train_set), max_length)


@functools.lru_cache(maxsize=None)
def _keeps_chosen_logits(model_class: type) -> bool:
    """Whether a causal-LM class computes logits at chosen positions only (`forward(logits_to_keep=<1-D tensor>)`)."""
    return "logits_to_keep" in inspect.signature(model_class.forward).parameters


def _causal_lm_class(model: torch.nn.Module) -> type:
    """The transformers class under the wrappers a training run adds (DDP's `.module`, peft's `get_base_model()`)."""
    model = getattr(model, "module", model)
    return type(model.get_base_model() if hasattr(model, "get_base_model") else model)


def summed_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """The summed next-token cross-entropy of a batch's learned tokens, and how many there are.

    Only the positions that predict a learned token in some row of the batch get logits (transformers' causal-LM
    heads take them as `logits_to_keep`, a 1-D tensor of positions): the LM head and the cross-entropy, whose cost
    and memory grow with the vocabulary, skip the prompts and the padding. A model class without `logits_to_keep`
    computes every position's logits and the same positions are picked from them: the loss is the same sum.

    Args:
        model: The causal LM (with its LoRA), called with the batch's inputs and `use_cache=False`.
        batch: `input_ids`, `labels` (`IGNORE_INDEX` where nothing is learned), `attention_mask` or `position_ids`;
            each `(batch, length)`.

    Returns:
        `(loss_sum, tokens)`: the summed loss (a scalar tensor) and the count of learned tokens.
    """
    inputs = {key: value for key, value in batch.items() if key != "labels"}
    targets = batch["labels"][:, 1:]
    positions = (targets != IGNORE_INDEX).any(dim=0).nonzero().squeeze(1)  # predicting position p learns token p + 1
    keep = {"logits_to_keep": positions} if _keeps_chosen_logits(_causal_lm_class(model)) else {}
    logits = model(**inputs, use_cache=False, **keep).logits.float()  # a KV cache would turn the packed-sequence masks off
    if logits.shape[1] != len(positions):  # every position's logits came back
        logits = logits[:, positions]
    targets = targets[:, positions]
    loss_sum = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                                                 ignore_index=IGNORE_INDEX, reduction="sum")
    return loss_sum, int((targets != IGNORE_INDEX).sum())


@torch.no_grad()
def packing_isolates_examples(model: torch.nn.Module, device: torch.device) -> bool:
    """Whether this model keeps packed examples apart (transformers' packed-sequence masks); warns when it does not."""
    vocab = model.get_input_embeddings().weight.shape[0]
    first, second = torch.arange(5, device=device) % vocab, torch.arange(7, 11, device=device) % vocab
    was_training = model.training
    model.eval()
    try:
        alone = model(input_ids=second[None], use_cache=False).logits
        positions = torch.tensor([[0, 1, 2, 3, 4, 0, 1, 2, 3]], device=device)
        packed = model(input_ids=torch.cat([first, second])[None], position_ids=positions, use_cache=False).logits
        isolated = torch.allclose(packed[:, 5:].float(), alone.float(), atol=1e-3, rtol=1e-3)
    except (TypeError, ValueError, RuntimeError):
        isolated = False
    finally:
        model.train(was_training)
    if not isolated:
        logger.warning("This model (or transformers version) does not keep packed examples apart, so batches are padded "
                       "instead (packing=False). Set group_by_length=True to reduce the padding.")
    return isolated


def learned_tokens(example: TokenizedExample) -> int:
    """How many of an example's tokens are learned (predicted from the token before them)."""
    return sum(1 for label in example.labels[1:] if label != IGNORE_INDEX)


def example_lengths(examples: Sequence[TokenizedExample]) -> list[int]:
    """The token count of each example (read off the arrays of cached examples)."""
    return examples.lengths() if isinstance(examples, TokenizedExamples) else [len(example.input_ids) for example in examples]


def total_learned_tokens(examples: Sequence[TokenizedExample]) -> int:
    """How many tokens of all the examples are learned (`learned_tokens`, summed)."""
    if isinstance(examples, TokenizedExamples):
        return int(examples.learned_counts().sum())
    return sum(learned_tokens(example) for example in examples)


@torch.no_grad()
def evaluation_loss(model: torch.nn.Module, examples: list[TokenizedExample], pad_token_id: int, batch_size: int,
                    device: Union[str, torch.device] = "cpu") -> float:
    """Mean cross-entropy per learned token over `examples` (the eval loss), with the model in eval mode."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for batch_indices in length_grouped_batches([len(e.input_ids) for e in examples], batch_size, seed=0):
        batch = {key: value.to(device) for key, value in collate([examples[i] for i in batch_indices], pad_token_id).items()}
        loss_sum, tokens = summed_loss(model, batch)
        total += loss_sum.item()
        count += tokens
    model.train(was_training)
    return total / max(count, 1)


def resolve_adapter_settings(pipeline: CausalLMPipeline, r: Optional[int], lora_alpha: Optional[float], lora_dropout: Optional[float],
                   target_modules: Any) -> tuple:
    """The adapter settings that run: the given ones (defaults for a new adapter), or those of the pipeline's adapter.

    Raises:
        ConfigError: The pipeline has an adapter, and a given setting differs from its own.
    """
    if not pipeline.has_lora:
        return (8 if r is None else r, 16 if lora_alpha is None else lora_alpha, 0.05 if lora_dropout is None else lora_dropout,
                pipeline.default_lora_targets() if target_modules is None else target_modules)
    config = pipeline.config
    own = {"r": config["lora_rank"], "lora_alpha": config["lora_alpha"] or config["lora_rank"],
           "lora_dropout": config["lora_dropout"], "target_modules": config["lora_target_modules"]}
    check_existing_lora(own, {"r": r, "lora_alpha": lora_alpha, "lora_dropout": lora_dropout, "target_modules": target_modules})
    return own["r"], own["lora_alpha"], own["lora_dropout"], own["target_modules"]


def _learned_segments(example: TokenizedExample) -> int:
    """How many separate runs of learned tokens an example has (its assistant turns)."""
    return sum(1 for index, label in enumerate(example.labels)
               if label != IGNORE_INDEX and (index == 0 or example.labels[index - 1] == IGNORE_INDEX))


def preflight(train_set: list[TokenizedExample], sources: Sequence[str], tokenizer: Any,
              end_of_turn: Optional[set[int]] = None) -> None:
    """Log an example with its loss mask (a multi-turn one when there is one); stop when no end-of-turn token is learned.

    Args:
        train_set: The tokenized training examples.
        sources: Where each came from (its record or line).
        tokenizer: The tokenizer.
        end_of_turn: The ids that end an assistant turn (default: the end-of-sequence token).

    Raises:
        TrainingError: No example learns an end-of-turn token: all are truncated before it, or the template ends
            assistant turns with no token that is learned.
    """
    end_of_turn = end_of_turn or {tokenizer.eos_token_id}
    names = ", ".join(repr(tokenizer.convert_ids_to_tokens(token_id)) for token_id in sorted(end_of_turn))
    learned_end = (train_set.count_learning(end_of_turn) if isinstance(train_set, TokenizedExamples)
                   else sum(1 for example in train_set if not end_of_turn.isdisjoint(example.labels)))
    shown = next((index for index, example in enumerate(train_set[:500]) if _learned_segments(example) > 1), 0)
    example = train_set[shown]
    turns = _learned_segments(example)
    logger.info("Preflight: %s, %d tokens, %d learned (in [brackets])%s:\n%s", sources[shown], len(example.input_ids),
                sum(1 for label in example.labels if label != IGNORE_INDEX),
                f", {turns} assistant turns" if turns > 1 else "", render_loss_mask(example, tokenizer))
    if learned_end == 0:
        raise TrainingError(
            f"No training example would learn an end-of-turn token ({names}): all {len(train_set)} are truncated before it "
            "(raise max_length), it is masked out, or the chat template ends assistant turns without one (end them with "
            "{{ eos_token }}). The model would never learn to stop."
        )
    if learned_end < len(train_set):
        logger.warning("%d of %d examples do not learn an end-of-turn token (%s): truncated by max_length.",
                       len(train_set) - learned_end, len(train_set), names)
