"""The genomics domain's one exception type."""
from __future__ import annotations

from mambaverse.errors import MambaverseError


class GenomicsDataError(MambaverseError, ValueError):
    """Bad genomics input. The message is one line naming the file, record or key and what was expected."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))  # always one line
