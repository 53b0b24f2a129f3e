"""Textual-inversion tokens of a `DiffusionPipeline`, in every text encoder of its family.

A family with one text encoder (SD 1/2) holds `{token: tensor[num_vectors, dim]}` per file, diffusers' layout. A
family with several (SDXL) learns one set of vectors per encoder and stores them under the family's
`embedding_keys`: `{"clip_l": [n, 768], "clip_g": [n, 1280]}` (no token name in the file; the repo's config holds it),
the layout A1111 and ComfyUI read and diffusers loads with one `load_textual_inversion` call per encoder:

```python
state_dict = safetensors.torch.load_file("out/model/learned_embeds.safetensors")
pipe.load_textual_inversion(state_dict["clip_l"], token="<tok>", text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer)
pipe.load_textual_inversion(state_dict["clip_g"], token="<tok>", text_encoder=pipe.text_encoder_2, tokenizer=pipe.tokenizer_2)
```
"""

from typing import Any, Mapping, Optional, Union
from pathlib import Path

import torch

from ..errors import ConfigError
from .embedding_files import check_new_token, read_textual_inversion, vector_token_names

__all__ = ["TextualInversionTokens"]

Vectors = Union[torch.Tensor, Mapping[str, torch.Tensor]]


class TextualInversionTokens:
    """The textual-inversion methods of `DiffusionPipeline` (which records `textual_inversion_tokens` in its config).

    The pipeline provides `family`, `pipe`, `config` and `_record`.
    """

    def _encoder_pairs(self) -> list[tuple[str, Any, Any]]:
        """`(component, text encoder, tokenizer)` of each text encoder of the family, in order."""
        return [(name, getattr(self.pipe, name), getattr(self.pipe, tokenizer))
                for name, tokenizer in zip(self.family.text_encoders, self.family.tokenizers)]

    def _per_encoder(self, token: str, vectors: Vectors) -> dict[str, torch.Tensor]:
        """`vectors` as `{component: [num_vectors, dim]}`, checked against each text encoder.

        Raises:
            ConfigError: A layout for another number of text encoders, a wrong shape, or non-finite values.
        """
        keys = dict(self.family.embedding_keys)
        if isinstance(vectors, Mapping):
            if not keys or set(vectors) != set(keys.values()):
                wanted = f"the keys {sorted(keys.values())}" if keys else "one tensor"
                raise ConfigError(f"The embedding for {token!r} holds {sorted(vectors)}; the {self.family.title} family needs "
                                  f"{wanted}. It was trained for another model family.")
            by_component = {component: vectors[key] for component, key in keys.items()}
        elif keys:
            raise ConfigError(f"The embedding for {token!r} is one tensor; the {self.family.title} family has "
                              f"{len(keys)} text encoders and needs one tensor for each, under {sorted(keys.values())}.")
        else:
            by_component = {self.family.text_encoders[0]: vectors}
        checked = {}
        for component, encoder, _ in self._encoder_pairs():
            rows = by_component[component]
            rows = rows.detach().reshape(1, -1) if rows.dim() == 1 else rows.detach()
            dim = encoder.get_input_embeddings().weight.shape[1]
            if rows.dim() != 2 or rows.shape[1] != dim or rows.shape[0] < 1:
                raise ConfigError(f"The embedding for {token!r} has shape {list(rows.shape)}; this text encoder"
                                  f"{f' ({component})' if len(checked) or keys else ''} needs [num_vectors, {dim}]. It was trained for another base model.")
            if not rows.is_floating_point() or not torch.isfinite(rows).all():
                raise ConfigError(f"The embedding for {token!r} is not finite floating-point values ({rows.dtype}).")
            checked[component] = rows
        if len({rows.shape[0] for rows in checked.values()}) != 1:
            raise ConfigError(f"The embedding for {token!r} has another number of vectors per text encoder "
                              f"({ {name: rows.shape[0] for name, rows in checked.items()} }); each needs the same.")
        return checked

    def add_textual_inversion(self, token: str, vectors: Vectors) -> list[int]:
        """Add `token` (and `<token>_1 ... <token>_{n-1}` for `n` vectors) with the given embedding rows.

        A prompt naming `token` then uses all `n` vectors, as diffusers' `load_textual_inversion` does.

        Args:
            token: The new token, e.g. `"<cat-toy>"`; it must not be known to the tokenizer.
            vectors: `[n, dim]` (or `[dim]`) embedding rows; for a family with several text encoders (SDXL) a
                mapping `{"clip_l": [n, dim_1], "clip_g": [n, dim_2]}` (the family's `embedding_keys`).
                Cast to each text encoder's dtype.

        Returns:
            The token ids of the `n` new tokens in the first tokenizer, in order.

        Raises:
            ConfigError: A known token, or vectors of the wrong layout, shape, or with NaN/inf values.
        """
        rows_by_component = self._per_encoder(token, vectors)
        tokens = vector_token_names(token, next(iter(rows_by_component.values())).shape[0])
        for _, _, tokenizer in self._encoder_pairs():
            for name in tokens:
                check_new_token(tokenizer, name)
        first_ids = None
        for component, encoder, tokenizer in self._encoder_pairs():
            embedding = encoder.get_input_embeddings()
            tokenizer.add_tokens(tokens)
            ids = tokenizer.convert_tokens_to_ids(tokens)
            rows = max(len(tokenizer), embedding.weight.shape[0])  # never shrink a padded embedding matrix
            encoder.resize_token_embeddings(rows, mean_resizing=False)
            with torch.no_grad():
                weight = encoder.get_input_embeddings().weight
                weight[ids] = rows_by_component[component].to(weight.device, weight.dtype)
            first_ids = ids if first_ids is None else first_ids
        self._record(textual_inversion_tokens=tuple(self.config["textual_inversion_tokens"]) + (token,))
        return first_ids

    def load_textual_inversion(self, embedding: Union[str, Path, torch.Tensor, Mapping[str, Any]], token: Optional[str] = None) -> str:
        """Load a textual-inversion embedding: a file or an in-memory tensor / state dict.

        Accepted: diffusers' `{token: tensor}` (`.safetensors`, or a legacy `.bin` read with
        `torch.load(weights_only=True)`, so nothing in it can run), the A1111 `.pt` layout
        (`{"string_to_param": {"*": tensor}, "name": ...}`), a bare tensor with an explicit `token`, and for SDXL the
        `{"clip_l": ..., "clip_g": ...}` layout with an explicit `token`.

        Args:
            embedding: The file, tensor or dict.
            token: The token to add; overrides the name stored in the file (needed for a bare tensor).

        Returns:
            The token added.

        Example:
        ```python
        pipeline.load_textual_inversion("learned_embeds.safetensors")
        pipeline.load_textual_inversion(torch.randn(2, 768), token="<my-style>")
        ```
        """
        token, vectors = read_textual_inversion(embedding, token)
        self.add_textual_inversion(token, vectors)
        return token

    def replace_textual_inversion(self, embedding: Union[str, Path, torch.Tensor, Mapping[str, Any]], token: Optional[str] = None) -> str:
        """Replace the vectors of one of this pipeline's textual-inversion tokens, or add the token to a pipeline without any.

        The new embedding may have another number of vectors than the old one (diffusers'
        `unload_textual_inversion` removes the old rows first). The token keeps its place, so the
        saved files keep their names. A file without a token name (SDXL's `clip_l` / `clip_g`) replaces the
        pipeline's only token.

        Args:
            embedding: A file, tensor or dict, in any layout `load_textual_inversion` reads.
            token: The token to replace; overrides the name stored in the embedding.

        Returns:
            The token replaced (or added).

        Raises:
            ConfigError: The pipeline has other textual-inversion tokens but not this one, or the
                embedding does not fit this text encoder (nothing is changed then).
        """
        tokens = tuple(self.config["textual_inversion_tokens"])
        token, vectors = read_textual_inversion(embedding, token, default_token=tokens[0] if len(tokens) == 1 else None)
        if token not in tokens:
            if tokens:
                raise ConfigError(f"The embedding is for the token {token!r}, but this pipeline's textual-inversion tokens are "
                                  f"{list(tokens)}. To load it under the pipeline's token, pass token={tokens[0]!r} (placeholder_token= "
                                  "with derive_pipeline).")
            return self.load_textual_inversion(vectors, token)
        self._per_encoder(token, vectors)
        for _, encoder, tokenizer in self._encoder_pairs():
            self.pipe.unload_textual_inversion(self._token_names(token), tokenizer=tokenizer, text_encoder=encoder)
        self._record(textual_inversion_tokens=tuple(name for name in tokens if name != token))
        self.add_textual_inversion(token, vectors)
        self._record(textual_inversion_tokens=tokens)
        return token

    def textual_inversion_embeddings(self) -> dict[str, Vectors]:
        """The embedding rows of every textual-inversion token: `{token: tensor[num_vectors, dim]}`; for a family with
        several text encoders `{token: {"clip_l": tensor, "clip_g": tensor}}` (its `embedding_keys`)."""
        embeddings = {}
        for token in self.config["textual_inversion_tokens"]:
            rows = {}
            for component, encoder, tokenizer in self._encoder_pairs():
                weight = encoder.get_input_embeddings().weight
                rows[component] = weight[tokenizer.convert_tokens_to_ids(self._token_names(token))].detach().cpu().clone()
            keys = self.family.embedding_keys
            embeddings[token] = {keys[component]: vectors for component, vectors in rows.items()} if keys else next(iter(rows.values()))
        return embeddings

    def _token_names(self, token: str) -> list[str]:
        """`token` and the `<token>_1, <token>_2, ...` the tokenizer holds for its further vectors."""
        vocab = getattr(self.pipe, self.family.tokenizers[0]).get_vocab()
        names = [token]
        while f"{token}_{len(names)}" in vocab:
            names.append(f"{token}_{len(names)}")
        return names
