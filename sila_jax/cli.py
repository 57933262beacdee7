"""What train.py, eval.py and export.py share: flag parsing and one-line user errors."""
import sys
from typing import Callable

from absl import app
from absl import flags

from sila_jax import config_checks
from sila_jax.errors import UserError


def _parse_flags(argv: list[str]) -> list[str]:
  """absl flag parsing, with unknown --config.<field> overrides reported with a suggestion."""
  try:
    return flags.FLAGS(argv)
  except flags.UnrecognizedFlagError as e:
    config = flags.FLAGS['config'].value if 'config' in flags.FLAGS else None
    if e.flagname.startswith('config.') and config is not None:
      known = list(config_checks.field_paths(config))
      sys.exit(f'{argv[0]}: {config_checks.unknown_field_message(e.flagname[7:], known)}')
    sys.exit(f'{argv[0]}: {e}')
  except flags.Error as e:
    sys.exit(f'{argv[0]}: {e}')


def run(main: Callable[[list[str]], None]) -> None:
  """app.run(main), printing a UserError as one line and exiting with status 1."""
  def main_reporting_user_errors(argv):
    if len(argv) > 1:
      raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
    try:
      main(argv)
    except UserError as e:
      sys.exit(f'{argv[0]}: error: {e}')

  app.run(main_reporting_user_errors, flags_parser=_parse_flags)
