"""The base of the exceptions a user can act on: the CLI prints their message without a traceback."""


class SkyclassError(RuntimeError):
    """An error with a message that names the input and says what to do."""
