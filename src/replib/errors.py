"""The one exception type replib raises for bad input: the CLI prints its message on one line."""


class ReplibError(ValueError):
    """A user-facing error: an unknown scale, chapter or device, a corrupt results file, ..."""
