"""Export the main branch for inference: python export.py --config=... (the same as `sila-export`).

See sila_jax/commands/export.py for its flags, or run it with --help.
"""
from sila_jax.commands import export

if __name__ == '__main__':
  export.main()
