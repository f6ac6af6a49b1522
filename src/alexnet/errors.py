"""User-facing errors. The CLI turns each into one line on stderr and a non-zero exit."""

from __future__ import annotations


class AlexNetError(Exception):
    """A mistake the user can fix: a bad path, a bad file, an unknown name, a bad value."""


class ConfigError(AlexNetError, ValueError):
    """An unknown key, a wrong type or a value out of range in a model or run config."""


class DataError(AlexNetError):
    """A missing, empty or malformed data source or store."""


class CheckpointError(AlexNetError):
    """A missing, corrupt or incompatible checkpoint."""


class DiskFullError(AlexNetError, OSError):
    """A write that found the disk (or the quota) full; what was there before is kept."""

    def __str__(self) -> str:  # the message alone, without OSError's "[Errno 28]"
        return str(self.strerror)
