"""The project's error types. The CLI turns any :class:`SelfcorrectError` into one clear message
and exit code 2; anything else is a bug and keeps its traceback."""


class SelfcorrectError(Exception):
    """Base class for errors caused by the user's input or environment, not by a bug."""


class PromptError(SelfcorrectError, ValueError):
    """A prompt outside the world grammar; the message names the part that was not understood."""


class UnsatisfiableError(PromptError):
    """A prompt the world cannot satisfy (too many objects, a contradiction)."""


class ImageError(SelfcorrectError, ValueError):
    """A missing, corrupt or unusable image file."""


class OutputError(SelfcorrectError, OSError):
    """An output path that cannot be written."""
