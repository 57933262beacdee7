"""The config schema (default.py: every field, commented) and the shipped configs.

In a checkout, the top-level configs/ is this folder. The commands also find a shipped
config by name from any directory: sila-train --config=quick --workdir=/tmp/quick.
"""
