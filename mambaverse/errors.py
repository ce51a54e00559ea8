"""One exception family for every input a user can get wrong."""


class MambaverseError(Exception):
    """Bad input: the message is one line naming what was wrong and what was expected."""


class ShapeError(MambaverseError, ValueError):
    """A tensor has the wrong shape or dtype."""


class BackendUnavailableError(MambaverseError, RuntimeError):
    """The requested backend cannot run on this machine or device."""


class ConfigError(MambaverseError, KeyError):
    """A config key, preset name or value is unknown or invalid."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class OutputPathError(MambaverseError, OSError):
    """An output or cache folder cannot be created or written (a file in the way, a read-only or virtual file
    system, no permission, a full disk). Also an ``OSError``, so ``except OSError`` handlers still see it."""

    def __str__(self) -> str:  # OSError would print "[Errno ...]" when given (errno, text)
        return str(self.args[0]) if self.args else ""
