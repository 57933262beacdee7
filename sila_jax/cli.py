"""What train.py, eval.py and export.py share: flag parsing and one-line user errors."""
import sys
from typing import Callable

from absl import app
from absl import flags

from sila_jax import config_checks
from sila_jax.errors import UserError


def _parse_flags(argv: list[str]) -> list[str]:
  """absl flag parsing; a bad flag or an unknown --config.<field> exits with one line."""
  try:
    return flags.FLAGS(argv)
  except (flags.Error, AttributeError, KeyError) as e:
    sys.exit(f'{argv[0]}: {unknown_override(argv) or e}')


def unknown_override(argv: list[str]) -> str | None:
  """A message for the first --config.<field> override that names no known field."""
  known = config_checks.known_fields()
  for arg in argv[1:]:
    if arg.startswith('--config.'):
      path = arg[len('--config.'):].split('=', 1)[0]
      if path not in known:
        return config_checks.unknown_field_message(path, known)
  return None


def _drop_closed_loop_noise(unraisable) -> None:
  # When orbax fails to read a damaged checkpoint it closes its event loop while other
  # reads are still in flight; their late callbacks raise this. Nothing is lost by it.
  if not (isinstance(unraisable.exc_value, RuntimeError)
          and str(unraisable.exc_value) == 'Event loop is closed'):
    sys.__unraisablehook__(unraisable)


def run(main: Callable[[list[str]], None]) -> None:
  """app.run(main), printing a UserError as one line and exiting with status 1."""
  sys.unraisablehook = _drop_closed_loop_noise

  def main_reporting_user_errors(argv):
    if len(argv) > 1:
      raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
    try:
      main(argv)
    except UserError as e:
      sys.exit(f'{argv[0]}: error: {e}')

  app.run(main_reporting_user_errors, flags_parser=_parse_flags)
