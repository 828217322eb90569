"""The one exception type users see."""


class PrimeSpeechError(Exception):
    """A user-facing error: the message says what went wrong and what to do about it."""
