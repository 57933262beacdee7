"""Train a SiLa model: python train.py --config=... (the same as `sila-train`).

See sila_jax/commands/train.py for its flags, or run it with --help.
"""
from sila_jax.commands import train

if __name__ == '__main__':
  train.main()
