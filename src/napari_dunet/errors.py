"""Exceptions whose message is written for the user (CLI prints it, widgets show it)."""


class DunetError(Exception):
    """Base class: ``str(error)`` is a complete sentence a user can act on."""


class InputError(DunetError, ValueError):
    """An input file, array or option value cannot be used (format, shape, values); also a
    ``ValueError``, for callers that catch those."""


class CheckpointError(DunetError):
    """A checkpoint cannot be read or does not match the requested model."""


class OutputExistsError(DunetError):
    """The output file exists and overwriting was not allowed."""


class Cancelled(DunetError):
    """Long work stopped because the user asked it to."""
