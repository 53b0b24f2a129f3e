"""The module names of an SDXL UNet in kohya's (Stability's "sgm") model: the names kohya's SDXL LoRAs are keyed by.

kohya's sd-scripts train SDXL on their own copy of Stability's original UNet (`sdxl_original_unet.py`), so an SDXL
LoRA names each module by its path there (`input_blocks.4.1.transformer_blocks.0.attn1.to_q`), not by diffusers'
(`down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q`). Both UNets hold the same modules in another order:

- `input_blocks.0.0` is `conv_in`; then, for each down block `i` and layer `j` (of `layers_per_block`),
  `input_blocks.{1 + i * (layers_per_block + 1) + j}` holds the resnet (`.0`) and, in a cross-attention block, the
  transformer (`.1`); a block's downsampler follows as `input_blocks.{(i + 1) * (layers_per_block + 1)}.0.op`;
- `middle_block.0` / `.1` / `.2` are the mid block's first resnet, transformer and second resnet;
- `output_blocks.{i * (layers_per_block + 1) + j}` holds up block `i`'s layer `j` (resnet `.0`, transformer `.1`), its
  upsampler following the last layer's modules (`.2.conv` after a transformer, `.1.conv` without);
- `time_embed.0/.2`, `label_emb.0.0/.0.2` (the added size/text embedding), `out.0` / `out.2` (norm and `conv_out`).
Inside a resnet the layers are renamed (`conv1` -> `in_layers.2`, `time_emb_proj` -> `emb_layers.1`, ...); inside a
transformer they keep their diffusers names. diffusers' single-file loader (`convert_ldm_unet_checkpoint`) and its
LoRA reader (`_maybe_map_sgm_blocks_to_diffusers`) map the other way; this module derives the names from the UNet's
config (`layers_per_block`, block types), so it holds for any SDXL-shaped UNet, tiny-sdxl's included.

```python
names = SgmNames(unet_config)
names.of("down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q")   # "input_blocks.4.1.transformer_blocks.0.attn1.to_q"
```
"""

from collections.abc import Mapping
from typing import Any

from ..errors import ConfigError

__all__ = ["SgmNames"]

_RESNET_LAYERS = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
                  "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
"""A diffusers resnet's layers by their names in the sgm `ResBlock`."""

_TOP_LEVEL = {"conv_in": "input_blocks.0.0", "time_embedding.linear_1": "time_embed.0",
              "time_embedding.linear_2": "time_embed.2", "add_embedding.linear_1": "label_emb.0.0",
              "add_embedding.linear_2": "label_emb.0.2", "conv_norm_out": "out.0", "conv_out": "out.2"}
"""The UNet's modules outside its blocks, by their sgm names."""


class SgmNames:
    """The sgm (kohya SDXL) name of each module of a diffusers SDXL UNet, derived from the UNet's config.

    Args:
        unet_config: The UNet's `config.json` (`layers_per_block`, `down_block_types`, `up_block_types`).

    Raises:
        ConfigError: The config has no single `layers_per_block` (the sgm layout numbers blocks by it).
    """

    def __init__(self, unet_config: Mapping[str, Any]):
        layers = unet_config.get("layers_per_block")
        if not isinstance(layers, int) or isinstance(layers, bool):
            raise ConfigError(f"The UNet's layers_per_block is {layers!r}; kohya's SDXL names number the blocks by one "
                              "integer layers_per_block. Export this LoRA with --format diffusers.")
        self.layers_per_block = layers
        self.up_block_types = tuple(unet_config.get("up_block_types") or ())

    def of(self, name: str) -> str:
        """The sgm path of the diffusers UNet module `name` (`"mid_block.attentions.0.proj_in"` -> `"middle_block.1.proj_in"`).

        Raises:
            ConfigError: The module has no place in the sgm UNet (the message names it).
        """
        for diffusers_name, sgm_name in _TOP_LEVEL.items():
            if name == diffusers_name or name.startswith(f"{diffusers_name}."):
                return sgm_name + name[len(diffusers_name):]
        parts = name.split(".")
        try:
            if parts[0] == "down_blocks":
                return self._down(int(parts[1]), parts[2], int(parts[3]), parts[4:], name)
            if parts[0] == "mid_block":
                index = {("resnets", "0"): 0, ("attentions", "0"): 1, ("resnets", "1"): 2}[(parts[1], parts[2])]
                return self._inner(f"middle_block.{index}", parts[1], parts[3:], name)
            if parts[0] == "up_blocks":
                return self._up(int(parts[1]), parts[2], int(parts[3]), parts[4:], name)
        except (IndexError, KeyError, ValueError):
            pass
        raise ConfigError(f"The UNet module {name!r} has no name in kohya's SDXL (sgm) UNet, so its LoRA cannot be "
                          "written in kohya's format; export it with --format diffusers, or train without that target.")

    def _down(self, block: int, kind: str, layer: int, rest: list[str], name: str) -> str:
        stride = self.layers_per_block + 1
        if kind == "downsamplers" and layer == 0 and rest[:1] == ["conv"]:
            return ".".join([f"input_blocks.{(block + 1) * stride}.0.op", *rest[1:]])
        if layer >= self.layers_per_block:
            raise KeyError(name)
        slot = {"resnets": 0, "attentions": 1}[kind]
        return self._inner(f"input_blocks.{1 + block * stride + layer}.{slot}", kind, rest, name)

    def _up(self, block: int, kind: str, layer: int, rest: list[str], name: str) -> str:
        stride = self.layers_per_block + 1
        if kind == "upsamplers" and layer == 0 and rest[:1] == ["conv"]:
            has_attention = "CrossAttn" in self.up_block_types[block]
            return ".".join([f"output_blocks.{block * stride + stride - 1}.{2 if has_attention else 1}.conv", *rest[1:]])
        if layer >= stride:
            raise KeyError(name)
        slot = {"resnets": 0, "attentions": 1}[kind]
        return self._inner(f"output_blocks.{block * stride + layer}.{slot}", kind, rest, name)

    @staticmethod
    def _inner(prefix: str, kind: str, rest: list[str], name: str) -> str:
        """A resnet's layer renamed (`conv1` -> `in_layers.2`); a transformer's layer as it is."""
        if kind == "resnets":
            return ".".join([prefix, _RESNET_LAYERS[rest[0]], *rest[1:]])
        if kind != "attentions" or not rest:
            raise KeyError(name)
        return ".".join([prefix, *rest])
