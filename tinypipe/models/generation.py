"""Generating with a transformers causal LM: prompts to left-padded ids, the tokens that stop a reply, the loop.

```python
batch = encode_prompts(tokenizer, ["Once upon a time"])         # or models.chat.encode_conversations(...)
ids = generate_new_tokens(model, batch, stop_ids=stop_token_ids(model, tokenizer), pad_token_id=tokenizer.pad_token_id,
                          device=torch.device("cpu"), max_new_tokens=32)
```

`CausalLMPipeline.generate` and `generate_ids` run through here.
"""

from collections.abc import Mapping, Sequence
from typing import Any, Optional

import torch

__all__ = ["encode_prompts", "generate_new_tokens", "stop_token_ids"]


def encode_prompts(tokenizer: Any, prompts: Sequence[str]) -> Any:
    """The input ids and attention mask of `prompts` as the tokenizer encodes them (with its `<bos>`), padded on the left."""
    padding_side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # generation continues from the right end of every row
    try:
        return tokenizer(list(prompts), return_tensors="pt", padding=True)
    finally:
        tokenizer.padding_side = padding_side


def stop_token_ids(model: torch.nn.Module, tokenizer: Any) -> list[int]:
    """The tokens a reply stops at: the tokenizer's end-of-sequence token and those of the model's generation config
    (a chat model's end-of-turn token is often only the one or the other's)."""
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    configured = [] if configured is None else [configured] if isinstance(configured, int) else list(configured)
    return list(dict.fromkeys([tokenizer.eos_token_id, *configured]))


@torch.no_grad()
def generate_new_tokens(model: torch.nn.Module, batch: Mapping[str, torch.Tensor], *, stop_ids: Sequence[int], pad_token_id: int,
                        device: torch.device, max_new_tokens: int = 64, do_sample: bool = False, temperature: float = 1.0,
                        top_p: float = 1.0, seed: Optional[int] = 0) -> list[list[int]]:
    """The new token ids of each row of a left-padded batch, each cut after its first stop token (kept).

    Args:
        model: The causal LM (put in eval mode while generating, then back).
        batch: `input_ids` and `attention_mask`, padded on the left.
        stop_ids: The tokens that end a reply (`stop_token_ids`).
        pad_token_id: The padding token.
        device: Where the model runs.
        max_new_tokens: Most tokens generated per row.
        do_sample: Sample instead of greedy decoding; `temperature` and `top_p` then apply.
        seed: Seed of the sampling (torch's RNG state is left as it was); None for an unseeded draw.
    """
    inputs = {key: batch[key].to(device) for key in ("input_ids", "attention_mask")}
    settings = dict(max_new_tokens=max_new_tokens, do_sample=do_sample, eos_token_id=list(stop_ids), pad_token_id=pad_token_id)
    if do_sample:
        settings.update(temperature=temperature, top_p=top_p)
    was_training = model.training
    model.eval()
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            if seed is not None:
                torch.manual_seed(seed)
            output = model.generate(**inputs, **settings)
    finally:
        model.train(was_training)
    results = []
    for row in output[:, inputs["input_ids"].shape[1]:].tolist():
        stop = next((index for index, token in enumerate(row) if token in stop_ids), None)
        results.append(row if stop is None else row[: stop + 1])
    return results
