"""Evaluate the main branch of a checkpoint or an export: python eval.py --config=...
(the same as `sila-eval`).

See sila_jax/commands/eval.py for its flags, or run it with --help.
"""
from sila_jax.commands import eval

if __name__ == '__main__':
  eval.main()
