"""Errors a user can act on. The CLI prints them as one line and exits non-zero; anything else is a bug."""


class WpoError(Exception):
    """Base class: the message alone tells the user what is wrong and where."""


class ConfigError(WpoError):
    """A recipe or override is invalid; the message names the key's dotted path."""


class DataError(WpoError):
    """An input record is invalid; the message names the file and line."""


class MachineLacks(WpoError):
    """This machine lacks what the recipe needs to run (a package, GPUs, a file), though the recipe itself may be
    right: a line each, `wpo: this machine lacks: ...`, and exit status 3 — apart from a recipe's mistakes (2), so a
    script can tell a recipe to fix from one to run elsewhere."""

    exit_code = 3

    def __init__(self, lacks: list[str]):
        super().__init__("this machine lacks: " + "; ".join(lacks))
        self.lacks = lacks


class NonFiniteError(WpoError):
    """A logit, log-prob, loss or gradient is NaN or infinite; the message says which, where, and for which pairs."""


class NativeCrash(WpoError):
    """A native library (llama.cpp) died by a signal in a child process wpo started; the message names the library,
    the file, the signal and the fix. Exit status 1: the command failed at run time, not on its input."""

    exit_code = 1


class Stopped(BaseException):  # noqa: N818 - like KeyboardInterrupt: no `except Exception` may swallow it
    """SIGTERM or SIGINT stopped the command after saving what it had: the rerun resumes. `exit_code` is the shell's
    (143 for SIGTERM, 130 for SIGINT)."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code
