"""Stable Diffusion XL: a UNet conditioned on two CLIP text encoders and on each image's size and crop.

As `StableDiffusionXLPipeline` (and diffusers' `train_dreambooth_lora_sdxl.py`) computes it:
- `prompt_embeds` `[N, L, D1 + D2]`: the penultimate hidden states of `text_encoder` (CLIP ViT-L) and
  `text_encoder_2` (OpenCLIP ViT-bigG), concatenated;
- `pooled_prompt_embeds` `[N, D2]`: the projected pooled output of `text_encoder_2`;
- `add_time_ids` `[N, 6]`: the image's `(height, width)` before resizing, the `(top, left)` of its crop, and the
  target size `(resolution, resolution)`.
The training objective is SD's DDPM noise (`families.sd.DDPMFamily`). A textual-inversion file holds one tensor per
text encoder, `{"clip_l": [n, D1], "clip_g": [n, D2]}`, the layout A1111 and ComfyUI read and diffusers reads with
two `load_textual_inversion` calls.
"""

from typing import Any, Mapping, Sequence

import torch

from .sd import DDPMFamily, _device_of

__all__ = ["StableDiffusionXLFamily", "FAMILY"]


class StableDiffusionXLFamily(DDPMFamily):
    """Stable Diffusion XL: `StableDiffusionXLPipeline`, two CLIP text encoders, size/crop conditioning, 1024 px."""

    name = "sdxl"
    title = "Stable Diffusion XL"
    pipeline_class_names = ("StableDiffusionXLPipeline",)
    text_encoders = ("text_encoder", "text_encoder_2")
    tokenizers = ("tokenizer", "tokenizer_2")
    default_resolution = 1024
    embedding_keys = {"text_encoder": "clip_l", "text_encoder_2": "clip_g"}

    def encode_prompts(self, pipe: Any, input_ids: Mapping[str, torch.Tensor],
                       text_encoders: Mapping[str, torch.nn.Module]) -> dict[str, torch.Tensor]:
        """`{"prompt_embeds": [N, L, D1 + D2], "pooled_prompt_embeds": [N, D2]}` (penultimate layers, pooled from the second)."""
        hidden, pooled = [], None
        for encoder_name, tokenizer_name in zip(self.text_encoders, self.tokenizers):
            encoder = text_encoders[encoder_name]
            output = encoder(input_ids[tokenizer_name].to(_device_of(encoder)), output_hidden_states=True)
            pooled = output[0]  # the projected pooled output of a CLIPTextModelWithProjection (the last encoder's is used)
            hidden.append(output.hidden_states[-2])
        return {"prompt_embeds": torch.cat(hidden, dim=-1), "pooled_prompt_embeds": pooled}

    def image_conditioning(self, original_sizes: Sequence[tuple[int, int]], crops_top_left: Sequence[tuple[int, int]],
                           resolution: int) -> dict[str, torch.Tensor]:
        """`{"add_time_ids": [N, 6]}`: original `(height, width)`, crop `(top, left)`, target `(resolution, resolution)`."""
        rows = [list(size) + list(crop) + [resolution, resolution] for size, crop in zip(original_sizes, crops_top_left)]
        return {"add_time_ids": torch.tensor(rows, dtype=torch.float32).reshape(len(rows), 6)}

    def denoiser_inputs(self, conditioning: Mapping[str, torch.Tensor], dtype: torch.dtype) -> dict[str, Any]:
        """The text states, and SDXL's added conditioning: the pooled text embedding and the size/crop ids."""
        return {"encoder_hidden_states": conditioning["prompt_embeds"].to(dtype),
                "added_cond_kwargs": {"text_embeds": conditioning["pooled_prompt_embeds"].to(dtype),
                                      "time_ids": conditioning["add_time_ids"].to(dtype)}}


FAMILY = StableDiffusionXLFamily()
