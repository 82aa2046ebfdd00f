"""Images in and out: the :class:`Volume` type, file reading/writing and library conversions.

Everything is in the LPS / ``array[k, j, i]`` convention described in :mod:`pantheon.io.volume`.
"""

from .readers import SUPPORTED_EXTENSIONS, read_volume, write_volume
from .volume import Volume

__all__ = ["Volume", "read_volume", "write_volume", "SUPPORTED_EXTENSIONS"]
