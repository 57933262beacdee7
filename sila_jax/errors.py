"""Errors in a run's input: the command-line tools print them as one line, no stack trace.
And the exit status they share after Ctrl-C."""

INTERRUPTED = 130  # The exit status of a command stopped by Ctrl-C (128 + SIGINT).


def first_line(error: BaseException) -> str:
  """What a library's `error` says, fit for a one-line report: its message's first line, at
  most 300 characters; its type's name if it has no message."""
  lines = str(error).strip().splitlines()
  return lines[0][:300] if lines else type(error).__name__


class UserError(Exception):
  """Something the user can fix: a config, the data, a checkpoint or the numbers."""


class ConfigError(UserError, ValueError):
  """An unknown config field or an invalid value."""


class DataError(UserError, ValueError):
  """A missing or empty data directory, an unreadable image, a label out of range."""


class CheckpointError(UserError):
  """A checkpoint that is corrupt, or written for another model."""


class NonFiniteLossError(UserError, FloatingPointError):
  """The loss or the parameters became NaN or infinite."""
