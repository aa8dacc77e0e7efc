"""Fine-tuning init: copy every weight from a checkpoint whose name and shape match; report what was re-initialised.

A new robot (other cameras, state or action dims, chunk size) keeps the vision, language and fusion weights and
re-initialises only the input/output layers that no longer fit.
"""

from __future__ import annotations

from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_file

from rfm.checkpoint import CheckpointError, read_config
from rfm.constants import WEIGHTS_FILE
from rfm.model.serialization import check_safetensors

NORM_PREFIXES = ("state_norm.", "action_norm.", "env_norm.")


def init_from_checkpoint(net, path: str | Path) -> dict:
    """Load matching tensors of checkpoint `path` into `net`; returns {"loaded": [...], "reinitialised": [...]}."""
    path = Path(path)
    read_config(path)  # validates the directory and gives a clear error if it is not a checkpoint
    check_safetensors(path / WEIGHTS_FILE)  # a truncated or corrupt file: an error naming it, not a traceback
    try:
        src = load_file(str(path / WEIGHTS_FILE))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path / WEIGHTS_FILE}: corrupt or truncated safetensors file ({e})") from None
    dst = net.state_dict()
    loaded, skipped = [], []
    for k, v in dst.items():
        # normalisation buffers always come from the new dataset's stats
        if k in src and tuple(src[k].shape) == tuple(v.shape) and not k.startswith(NORM_PREFIXES):
            dst[k] = src[k].to(v.dtype)
            loaded.append(k)
        elif not k.startswith(NORM_PREFIXES):
            skipped.append(k)
    net.load_state_dict(dst)
    return {"loaded": loaded, "reinitialised": skipped}
