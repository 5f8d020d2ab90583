"""The exceptions that mean "the user's input is wrong", as opposed to a bug in cit_fast.

The CLI prints a ``UserError`` as one line (``cit-fast <command>: error: <message>``) and exits 2;
anything else keeps its traceback, because it is ours to fix. Each message names the file, key or
field at fault and says what was expected. The subclasses also derive from ``ValueError`` so code
that catches bad values generically keeps working.
"""
from __future__ import annotations


class UserError(Exception):
    """Bad input from the user: a path, a config value, a data file, a command-line option."""


class ConfigError(UserError, ValueError):
    """A config file, key or value is wrong; the message names it and says what was expected."""


class DataError(UserError, ValueError):
    """Bad input data; the message names the file or field and what was expected."""


class CheckpointError(UserError, ValueError):
    """A checkpoint, init or weight file that cannot be used as asked; the message names the file."""


class UsageError(UserError, ValueError):
    """A command-line option or a combination of options that does not apply."""
