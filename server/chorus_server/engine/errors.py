"""Errors raised by the engine. The server maps them to HTTP statuses in one place."""


class EngineError(Exception):
    """Base class for every error the engine raises on purpose."""


class CheckpointError(EngineError):
    """A backbone checkpoint directory is missing files, has unexpected keys or an unsupported config."""


class AdapterError(EngineError):
    """An adapter file is malformed or does not fit the backbone (missing keys, wrong shapes, wrong fingerprint)."""


class InputError(EngineError):
    """Audio handed to the engine is unusable (wrong shape, NaN/Inf, length mismatch)."""


class DeviceOutOfMemory(EngineError):
    """The device ran out of memory even for a batch of one item; retrying later may succeed."""


class DeviceFault(EngineError):
    """The device failed in a way that poisons the process (a sticky CUDA error); the worker must be replaced."""
