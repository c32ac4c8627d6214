"""Where a model's checkpoint comes from, found without torch: a command refuses a model it cannot
load in a fraction of a second, before torch and transformers are imported (cli/model_commands.py).

A registry entry's checkpoint is a local directory, a tiny checkpoint built into the data directory
on first use, or a hub id, cached or downloadable; anything else fails with what to do about it.
"""

import socket
import urllib.parse
from pathlib import Path

from blip2.errors import CheckpointUnavailable, ModelNotFound
from blip2.registry import PRETRAINED_DIR, ModelSpec, is_checkpoint_dir


def locate_checkpoint(spec: ModelSpec, data_dir: Path) -> str:
    """A local directory holding the checkpoint, or a hub id that is cached or reachable; a tiny
    checkpoint is built into `data_dir` first, if it is not there yet."""
    if spec.tiny:
        from blip2.tiny import ensure_tiny_checkpoint  # torch: only where a checkpoint is built

        return str(ensure_tiny_checkpoint(spec.checkpoint, data_dir))
    return require_checkpoint(spec)


def require_checkpoint(spec: ModelSpec) -> str:
    """Where a checkpoint that is not tiny loads from, or why it cannot be had (ModelNotFound,
    CheckpointUnavailable), without building or reading anything."""
    path = Path(spec.checkpoint).expanduser()
    if is_checkpoint_dir(path):
        return str(path)
    if path.is_absolute() or spec.checkpoint.startswith((".", "~")):
        hint = "; `make demo-models` trains it" if path.parent == PRETRAINED_DIR else ""
        raise ModelNotFound(
            f"model {spec.name!r}: no checkpoint at {path} (expected a directory with config.json){hint}"
        )
    _require_hub_access(spec)
    return spec.checkpoint


def _require_hub_access(spec: ModelSpec) -> None:
    """Fail at once, with advice, when a hub checkpoint is neither cached nor downloadable."""
    from huggingface_hub import constants, try_to_load_from_cache

    if isinstance(try_to_load_from_cache(spec.checkpoint, "config.json"), str):
        return
    if constants.HF_HUB_OFFLINE or not _reachable(constants.ENDPOINT):
        why = "offline mode is on (HF_HUB_OFFLINE=1)" if constants.HF_HUB_OFFLINE else "the hub is unreachable"
        raise CheckpointUnavailable(
            f"model {spec.name!r} ({spec.checkpoint}) is not in the Hugging Face cache ({constants.HF_HUB_CACHE}) "
            f"and {why}: download it where there is network (`hf download {spec.checkpoint}`) and copy the "
            "cache here (set HF_HOME), or pass a local checkpoint directory as the model"
        )


def _reachable(endpoint: str, timeout_s: float = 3.0) -> bool:
    # One quick TCP connect instead of transformers' five retries with back-off (about 30 s).
    url = urllib.parse.urlparse(endpoint)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "", port), timeout=timeout_s):
            return True
    except OSError:
        return False
