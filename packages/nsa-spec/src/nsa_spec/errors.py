"""The two exceptions every package raises: invalid math input, or valid input nobody supports."""


class InvalidInputError(ValueError):
    """Input that is invalid for the math itself; the message names the argument, value and rule."""


class UnsupportedError(NotImplementedError):
    """Valid input that no available backend supports; the message lists why, per backend."""
