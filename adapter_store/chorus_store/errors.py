"""Errors raised by the adapter store. The server maps them to HTTP statuses in one place."""


class StoreError(Exception):
    """Base class for every error the store raises on purpose."""


class AdapterNotFound(StoreError):
    """No adapter with this ID (or the caller may not see it)."""


class VersionNotFound(StoreError):
    """The adapter exists but not this version."""


class AdapterRejected(StoreError):
    """A published file failed validation; nothing became visible."""


class PublishConflict(StoreError):
    """The adapter's current version is not the one the publisher expected."""


class NameTaken(StoreError):
    """Another owner's public adapter already has this name (public names are one shared namespace)."""


class AdapterCorrupt(StoreError):
    """Stored bytes or records are damaged: no retry will help; publish again or delete the adapter."""


class StoreUnavailable(StoreError):
    """The storage backend cannot be read or written right now."""
