"""Resolving a local checkpoint directory or a Hugging Face hub id to a local directory."""

from __future__ import annotations

import os

from vl_jax.errors import NotFoundError

# Files a model loader may need; weights are safetensors only (never .bin / .pt pickles).
DEFAULT_PATTERNS = (
    "*.json",
    "*.safetensors",
    "*.txt",
    "*.model",
    "*.tiktoken",
)


def resolve(
    path_or_id: str,
    *,
    revision: str | None = None,
    cache_dir: str | None = None,
    allow_patterns: tuple[str, ...] = DEFAULT_PATTERNS,
) -> str:
    """Returns a local directory holding the checkpoint.

    An existing directory is used as it is. Anything else is taken as a hub id (`org/name`) and
    fetched through `huggingface_hub.snapshot_download`, which honours `HF_HUB_OFFLINE=1` (then only
    the local cache is consulted) and `HF_HOME` / `HF_HUB_CACHE`.

    Raises:
      FileNotFoundError: the path does not exist and the hub id cannot be resolved (offline and not
        cached, unknown repository, no network); the message says which and what to do.
    """
    path = os.path.expanduser(path_or_id)
    if os.path.isdir(path):
        return path
    if os.path.exists(path):
        raise NotADirectoryError(f"{path_or_id}: expected a checkpoint directory, got a file")
    looks_like_id = path_or_id.count("/") <= 1 and not path_or_id.startswith((".", "/", "~"))
    if not looks_like_id:
        raise NotFoundError(f"{path_or_id}: no such checkpoint directory")

    import huggingface_hub
    from huggingface_hub import constants

    try:
        return huggingface_hub.snapshot_download(
            path_or_id,
            revision=revision,
            cache_dir=cache_dir,
            allow_patterns=list(allow_patterns),
        )
    except Exception as e:  # the hub raises many types (offline, 404, auth, connection)
        offline = constants.HF_HUB_OFFLINE
        hint = (
            "HF_HUB_OFFLINE is set and it is not in the local cache"
            if offline
            else "it could not be downloaded"
        )
        raise NotFoundError(
            f"'{path_or_id}' is not a local directory and {hint} ({type(e).__name__}: {e}). "
            f"Download it where there is network (`hf download {path_or_id}`) and copy the cache "
            "(HF_HOME), or pass the path of a local checkpoint directory."
        ) from e
