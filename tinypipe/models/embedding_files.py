"""Textual-inversion embedding files: diffusers' `learned_embeds.safetensors` and A1111's `.pt` layout.

diffusers (`load_textual_inversion`) stores one `{token: tensor[num_vectors, dim]}` per file and names the
extra vectors of a multi-vector token `<token>_1 ... <token>_{n-1}`; stable-diffusion-webui (A1111) stores
`{"string_to_param": {"*": tensor}, "name": token}`. For SDXL, A1111, ComfyUI and diffusers' SDXL scripts store one
tensor per text encoder: `{"clip_l": tensor[n, 768], "clip_g": tensor[n, 1280]}`. Pickled files are read with `torch.load(weights_only=True)`,
so nothing in them runs.
"""

import pickle
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import torch

from ..errors import ConfigError

__all__ = ["MULTI_ENCODER_KEYS", "TEXTUAL_INVERSION_NAME", "check_new_token", "read_textual_inversion", "textual_inversion_file_name",
           "vector_token_names"]

TEXTUAL_INVERSION_NAME = "learned_embeds.safetensors"
MULTI_ENCODER_KEYS = ("clip_l", "clip_g")
"""The keys of an SDXL embedding file (A1111 / ComfyUI / diffusers): the vectors of each text encoder."""


def vector_token_names(token: str, count: int) -> list[str]:
    """The tokens of a `count`-vector embedding: `token`, then `<token>_1 ... <token>_{count-1}` (diffusers' naming)."""
    return [token] + [f"{token}_{index}" for index in range(1, count)]


def textual_inversion_file_name(index: int) -> str:
    """`learned_embeds.safetensors` for the first token, `learned_embeds-2.safetensors` for the second, ..."""
    return TEXTUAL_INVERSION_NAME if index == 0 else TEXTUAL_INVERSION_NAME.replace(".safetensors", f"-{index + 1}.safetensors")


def check_new_token(tokenizer, token: str) -> None:
    """Refuse a token that cannot be added: empty, with whitespace, or already meaning something to `tokenizer`.

    A token the tokenizer reads as one known piece (`"dog"`, `"sks"`) is refused too: adding it would
    silently change what every prompt using that word means.

    Raises:
        ConfigError: Naming the token and what to do instead.
    """
    if not isinstance(token, str) or not token or any(character.isspace() for character in token):
        raise ConfigError(f"A textual-inversion token must be a non-empty string without spaces, got {token!r}; "
                          "use something like '<my-concept>'.")
    if token in tokenizer.get_vocab() or len(tokenizer.tokenize(token)) == 1:
        raise ConfigError(f"The token {token!r} is already known to the tokenizer; adding it would change what prompts "
                          "using it mean. Choose a new token, e.g. '<my-concept>'.")


def read_textual_inversion(embedding: Union[str, Path, torch.Tensor, Mapping[str, Any]], token: Optional[str] = None,
                           default_token: Optional[str] = None) -> tuple[str, Union[torch.Tensor, dict[str, torch.Tensor]]]:
    """Read a textual-inversion embedding into `(token, tensor[num_vectors, dim])`, without running any code.

    An SDXL file (`{"clip_l": ..., "clip_g": ...}`, no token name in it) gives `(token, {"clip_l": ..., "clip_g": ...})`
    and needs `token`.

    Args:
        embedding: A `.safetensors` file, a `.bin`/`.pt` file (read with `torch.load(weights_only=True)`), a
            tensor, or a state dict in the diffusers (`{token: tensor}`) or A1111 (`string_to_param`) layout.
        token: The token; wins over the name in the file, and is required for a bare tensor.
        default_token: The token of an embedding that stores no name (a bare tensor, an SDXL file) when `token` is
            None (a pipeline replacing its only token passes that token).

    Raises:
        ConfigError: An unreadable or refused file, or a layout that is not one of the above.
    """
    source = repr(str(embedding)) if isinstance(embedding, (str, Path)) else "the embedding"
    unnamed_token = token if token is not None else default_token
    if isinstance(embedding, (str, Path)):
        embedding = _read_embedding_file(Path(embedding))
    if isinstance(embedding, torch.Tensor):
        token = unnamed_token
        if token is None:
            raise ConfigError(f"{source} is a bare tensor with no token name; pass token='<my-token>' (placeholder_token= with "
                              "derive_pipeline, --placeholder-token with tinypipe derive).")
        return token, embedding
    if not isinstance(embedding, Mapping):
        raise ConfigError(f"{source} holds a {type(embedding).__name__}, not a tensor or a {{token: tensor}} dict.")
    if "string_to_param" in embedding:  # A1111 / stable-diffusion-webui
        parameters = embedding["string_to_param"]
        if not isinstance(parameters, Mapping) or len(parameters) != 1:
            raise ConfigError(f"{source} is an A1111 embedding whose 'string_to_param' should hold one tensor; it holds "
                              f"{len(parameters) if isinstance(parameters, Mapping) else type(parameters).__name__}.")
        name = embedding.get("name")
        vectors = next(iter(parameters.values()))
        token = token or (name if isinstance(name, str) and name else None)
        if token is None:
            raise ConfigError(f"{source} is an A1111 embedding with no 'name'; pass token='<my-token>' (placeholder_token= "
                              "with derive_pipeline, --placeholder-token with tinypipe derive).")
    elif len(embedding) > 1 and set(map(str, embedding)) <= set(MULTI_ENCODER_KEYS):  # SDXL: one tensor per text encoder
        token = unnamed_token
        if token is None:
            raise ConfigError(f"{source} holds one embedding per text encoder ({sorted(embedding)}) and no token name; pass "
                              "token='<my-token>' (placeholder_token= with derive_pipeline, --placeholder-token with tinypipe "
                              "derive).")
        if not all(isinstance(value, torch.Tensor) for value in embedding.values()):
            raise ConfigError(f"{source}: the embedding of {token!r} holds something other than tensors.")
        return token, dict(embedding)
    elif len(embedding) == 1:  # diffusers
        stored, vectors = next(iter(embedding.items()))
        token = token or stored
    else:
        keys = sorted(map(str, embedding))[:5]
        raise ConfigError(f"{source} holds {len(embedding)} keys {keys}; a textual-inversion embedding holds one "
                          "{token: tensor} (diffusers) or 'string_to_param' (A1111). Save each token in its own file.")
    if not isinstance(vectors, torch.Tensor):
        raise ConfigError(f"{source}: the embedding of {token!r} is a {type(vectors).__name__}, not a tensor.")
    return token, vectors


def _read_embedding_file(path: Path) -> Any:
    """The object stored in an embedding file; pickles are read with `weights_only=True` (no code runs)."""
    if not path.is_file():
        raise ConfigError(f"The embedding file {path} does not exist.")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError) as error:
            raise ConfigError(f"{path} is not a readable safetensors file: {error}.") from error
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, TypeError, AttributeError, OSError) as error:
        raise ConfigError(
            f"Refused to load {path}: it is not a plain file of tensors ({str(error).splitlines()[0][:200]}). Pickled "
            "files are read with torch.load(weights_only=True) so that nothing in them runs; convert the embedding to "
            ".safetensors from a source you trust."
        ) from error
