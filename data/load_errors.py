"""Why a weights file would not load, in one line a user can act on."""

from __future__ import annotations

import pickle

from safetensors import SafetensorError

# What torch.load, safetensors and load_state_dict raise for a missing, corrupt, partial or mismatched file.
WEIGHT_FILE_ERRORS = (OSError, EOFError, ValueError, RuntimeError, pickle.UnpicklingError, SafetensorError)

_MAX_CHARS = 400  # a state-dict mismatch lists every key: keep the head


def describe_load_error(exc: BaseException) -> str:
    """A bounded, one-line reason; torch's weights_only refusal is reduced to its cause and what to do."""
    text = str(exc)
    if isinstance(exc, pickle.UnpicklingError) and "WeightsUnpickler error:" in text:
        cause = " ".join(text.split("WeightsUnpickler error:", 1)[1].split("Check the documentation", 1)[0].split())
        return (
            f"not a plain tensor checkpoint ({cause}). Weights are loaded with weights_only=True, which refuses "
            "pickled Python objects; a corrupt or partial download fails the same way. Download the file "
            "again, or re-save a checkpoint you trust with torch.save(model.state_dict(), path)."
        )
    text = " ".join(text.split())
    return f"{type(exc).__name__}: {text[:_MAX_CHARS]}{'...' if len(text) > _MAX_CHARS else ''}"
