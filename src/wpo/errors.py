"""Errors a user can act on. The CLI prints them as one line and exits non-zero; anything else is a bug."""


class WpoError(Exception):
    """Base class: the message alone tells the user what is wrong and where."""


class ConfigError(WpoError):
    """A recipe or override is invalid; the message names the key's dotted path."""


class DataError(WpoError):
    """An input record is invalid; the message names the file and line."""


class NonFiniteError(WpoError):
    """A logit, log-prob, loss or gradient is NaN or infinite; the message says which, where, and for which pairs."""
