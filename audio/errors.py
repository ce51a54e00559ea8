"""The audio domain's one exception type."""
from __future__ import annotations

from mambaverse.errors import MambaverseError


class AudioDataError(MambaverseError, ValueError):
    """Bad audio input (a file, a folder, a label, a config value). The message is one line naming the file or
    key and what was expected."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))  # always one line
