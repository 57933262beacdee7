"""The command-line tools: sila-train, sila-eval, sila-export (python -m sila_jax lists them)."""
