"""Error types shared by every layer.

Each carries one sentence meant for the person at the keyboard: the command line prints it
on stderr, the Slicer panel shows it, the worker sends it back as a structured error.
"""


class PantheonError(Exception):
    """Base class: an expected failure with a message a user can act on."""


class InputError(PantheonError):
    """The input image is not something this pipeline can use (dimensionality, range, NaN...)."""


class InvalidParameter(InputError, ValueError):
    """A parameter outside what a pipeline accepts (a batch size of 0, a negative noise level...).

    Also a ValueError, so code that caught the ValueErrors these checks replace still catches them.
    """


class CheckpointError(PantheonError):
    """A weights file is missing, truncated, corrupted or belongs to another model."""


class RegistryError(PantheonError):
    """A model card is invalid or weights cannot be resolved."""


class DownloadError(RegistryError):
    """A download failed, was interrupted, or its checksum did not match."""


class Cancelled(PantheonError):
    """The user cancelled the running job."""
