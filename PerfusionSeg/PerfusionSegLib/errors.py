"""Typed exceptions of the perfusion core.

Everything the user can fix (a bad file, a missing option) is a :class:`PerfusionInputError`: the CLI prints its
message on one line and exits with status 2. Anything else is a bug (exit status 1).
"""


class PerfusionError(Exception):
    """Base class of every error raised on purpose by the perfusion libraries."""


class PerfusionInputError(PerfusionError, ValueError):
    """The input (file, array, option) is unusable; the message says why in one line."""


class UnreadableFileError(PerfusionInputError):
    """A file is missing, truncated, or not in a format we read."""


class InvalidSeriesError(PerfusionInputError):
    """An array is not a usable 2D+T series (dimensionality, frame count, NaN/Inf, constant, absurd size)."""


class MissingGeometryError(PerfusionInputError):
    """Pixel spacing or frame timing is absent and no override was given; we refuse to guess silently."""


class AmbiguousInputError(PerfusionInputError):
    """Several series (or slices) match and no selector says which one to use."""


class InvalidLabelsError(PerfusionInputError):
    """A label map does not fit the series or holds codes we cannot map."""


class InvalidParameterError(PerfusionInputError):
    """An option or parameter value is out of range."""
