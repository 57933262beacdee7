"""python -m sila_jax [<command> [flags]]: lists the commands, or runs one of them."""
import importlib
import sys

# name -> (module with main(), what it does). Installed as console scripts sila-<name>.
COMMANDS = {
    'train': ('sila_jax.commands.train', 'train a model (resumes an interrupted run)'),
    'eval': ('sila_jax.commands.eval', "evaluate a checkpoint's or an export's main branch"),
    'export': ('sila_jax.commands.export', 'export the main branch for inference'),
    'plot': ('sila_jax.experiments.plot', 'draw loss and accuracy curves of run directories'),
}


def usage() -> str:
  lines = ['usage: python -m sila_jax <command> [flags]   (or: sila-<command> [flags])', '',
           'commands:']
  lines += [f'  {name:<8}{summary}  (sila-{name})' for name, (_, summary) in COMMANDS.items()]
  lines += ['', 'Each command lists its flags with --help, e.g. sila-train --help.']
  return '\n'.join(lines)


def main() -> None:
  if len(sys.argv) < 2 or sys.argv[1] in ('-h', '--help', 'help'):
    print(usage())
    return
  if sys.argv[1] not in COMMANDS:
    sys.exit(f'python -m sila_jax: unknown command {sys.argv[1]!r}\n{usage()}')
  module, _ = COMMANDS[sys.argv[1]]
  sys.argv = [f'sila-{sys.argv[1]}', *sys.argv[2:]]
  importlib.import_module(module).main()


if __name__ == '__main__':
  main()
