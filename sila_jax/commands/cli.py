"""What the commands (sila-train, sila-eval, sila-export, the experiment runner and the
campaign) share: flag parsing, finding a shipped config by name, a log without the libraries'
chatter, one-line user errors and Ctrl-C."""
import importlib.util
import logging
import os
import sys
from typing import Any, Callable

from absl import app
from absl import flags
from absl import logging as absl_logging

from sila_jax import config_checks
from sila_jax import configs
from sila_jax.errors import INTERRUPTED, ConfigError, UserError

CONFIG_DIR = os.path.dirname(configs.__file__)
# Libraries whose INFO lines (JAX probing for a TPU, orbax's lines per save, optax's notes)
# stay out of the commands' log unless --verbosity is 1 or more.
QUIET_LIBRARIES = ('jax', 'jaxlib', 'flax', 'optax', 'orbax', 'chex')


def shipped_configs() -> list[str]:
  """The names of the shipped configs ('cifar10', 'quick', ...): the files of CONFIG_DIR
  with a get_config() (campaign files hold get_campaign() instead)."""
  def is_config(name):
    with open(os.path.join(CONFIG_DIR, name)) as f:
      return 'def get_config(' in f.read()
  return sorted(name[:-3] for name in os.listdir(CONFIG_DIR)
                if name.endswith('.py') and not name.startswith('_') and is_config(name))


def shipped_config(value: str) -> str:
  """A --config value naming a shipped config where no such file exists ('quick',
  'cifar10.py:arg', 'configs/cifar10_folder.py') as that file's path in the installed
  package, so the commands run from any directory; the path of an existing file unchanged.

  Raises:
    ConfigError: `value` names neither a file nor a shipped config.
  """
  path, colon, arg = value.partition(':')
  if os.path.isfile(path):
    return value
  name = path.removeprefix('configs/').removesuffix('.py')
  if name not in shipped_configs():
    raise ConfigError(f'--config={value}: no config file {path!r}, nor a shipped config of '
                      f"that name ({', '.join(shipped_configs())}).")
  return os.path.join(CONFIG_DIR, f'{name}.py') + colon + arg


def _with_shipped_configs(argv: list[str]) -> list[str]:
  """argv with each --config value (--config=X or --config X) passed through shipped_config."""
  argv = list(argv)
  for i, arg in enumerate(argv):
    if arg.startswith('--config='):
      argv[i] = '--config=' + shipped_config(arg[len('--config='):])
    elif arg == '--config' and i + 1 < len(argv):
      argv[i + 1] = shipped_config(argv[i + 1])
  return argv


def _parse_flags(argv: list[str]) -> list[str]:
  """absl flag parsing; a bad flag or an unknown --config.<field> exits with one line."""
  command = os.path.basename(argv[0])
  try:
    remaining = flags.FLAGS(_with_shipped_configs(argv))
    if 'config' in flags.FLAGS:
      flags.FLAGS['config'].value  # pylint: disable=pointless-statement  # Loads it if not yet.
  except Exception as e:  # A bad flag, an unknown field, whatever the config file raised.
    # A config file's own error arrives with its traceback as text: its last line says it.
    sys.exit(f'{command}: {unknown_override(argv) or str(e).strip().splitlines()[-1]}')
  return remaining


def overridden_fields(argv: list[str]) -> list[str]:
  """The fields of argv's --config.<field>[=<value>] overrides, in order:
  ['sila-train', '--config.sila.weight=2'] -> ['sila.weight']."""
  return [arg[len('--config.'):].split('=', 1)[0] for arg in argv[1:]
          if arg.startswith('--config.')]


def unknown_override(argv: list[str]) -> str | None:
  """A message for the first --config.<field> override that names no known field."""
  known = config_checks.known_fields()
  for path in overridden_fields(argv):
    if path not in known:
      return config_checks.unknown_field_message(path, known)
  return None


def _library_dirs() -> tuple[str, ...]:
  """The installed directories of QUIET_LIBRARIES' packages, each ending in a separator."""
  dirs = []
  for name in QUIET_LIBRARIES:
    spec = importlib.util.find_spec(name)
    for location in (spec.submodule_search_locations or []) if spec else []:
      dirs.append(os.path.join(os.path.realpath(location), ''))
  return tuple(dirs)


def quiet_library_logs() -> None:
  """Drops the INFO lines of QUIET_LIBRARIES from the absl log (warnings and errors stay),
  unless absl's --verbosity (-v) is 1 or more. Calling it again changes nothing."""
  if flags.FLAGS.is_parsed() and flags.FLAGS.verbosity >= 1:
    return
  handler = absl_logging.get_absl_handler()
  if not any(getattr(f, 'quiet_libraries', False) for f in handler.filters):
    dirs = _library_dirs()

    def ours(record: logging.LogRecord) -> bool:
      return (record.levelno >= logging.WARNING
              or not os.path.realpath(record.pathname).startswith(dirs))
    ours.quiet_libraries = True
    handler.addFilter(ours)


def _stopped_by_ctrl_c(command: str) -> str:
  return (f'{command}: stopped by Ctrl-C; files it writes appear whole or not at all, and the '
          'checkpoints saved so far are intact.')


def _unraisable_hook(command: str) -> Callable[[Any], None]:
  """sys.unraisablehook for `command`: Ctrl-C inside a finalizer or an atexit callback (a
  second press while the command exits) ends it as Ctrl-C elsewhere does, in one line with
  status 130; orbax's closed-loop noise is dropped; the rest is Python's report."""
  def hook(unraisable) -> None:
    if isinstance(unraisable.exc_value, KeyboardInterrupt):
      sys.stdout.flush()
      print(_stopped_by_ctrl_c(command), file=sys.stderr, flush=True)
      os._exit(INTERRUPTED)  # pylint: disable=protected-access
    # When orbax fails to read a damaged checkpoint it closes its event loop while other
    # reads are still in flight; their late callbacks raise this. Nothing is lost by it.
    if not (isinstance(unraisable.exc_value, RuntimeError)
            and str(unraisable.exc_value) == 'Event loop is closed'):
      sys.__unraisablehook__(unraisable)
  return hook


def run_command(main: Callable[[list[str]], None]) -> None:
  """app.run(main), the libraries' INFO lines left out of the log (quiet_library_logs),
  printing a UserError as one line and exiting with status 1, and a KeyboardInterrupt
  (Ctrl-C where the command does not catch it, even in a finalizer) as one line, status 130."""

  def main_reporting_user_errors(argv):
    command = os.path.basename(argv[0])
    sys.unraisablehook = _unraisable_hook(command)
    if len(argv) > 1:
      raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
    quiet_library_logs()
    try:
      main(argv)
    except UserError as e:
      sys.exit(f'{command}: error: {e}')
    except KeyboardInterrupt:
      print(_stopped_by_ctrl_c(command), file=sys.stderr)
      sys.exit(INTERRUPTED)

  app.run(main_reporting_user_errors, flags_parser=_parse_flags)
