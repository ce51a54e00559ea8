"""The vision domain's one exception type."""
from __future__ import annotations

from mambaverse.errors import MambaverseError


class VisionDataError(MambaverseError, ValueError):
    """Bad vision input (an image, mask, folder or IDX file). The message is one line naming the file and
    what was expected."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))  # always one line
