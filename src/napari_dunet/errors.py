"""Exceptions whose message is written for the user (CLI prints it, widgets show it)."""


class DunetError(Exception):
    """Base class: ``str(error)`` is a complete sentence a user can act on."""


class InputError(DunetError):
    """An input file or array cannot be used (format, shape, values)."""


class CheckpointError(DunetError):
    """A checkpoint cannot be read or does not match the requested model."""


class OutputExistsError(DunetError):
    """The output file exists and overwriting was not allowed."""


class Cancelled(DunetError):
    """Long work stopped because the user asked it to."""
