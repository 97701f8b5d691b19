"""`python -m imagesynth ...` runs the CLI (as torchrun and subprocess tests need)."""

from .cli import main

main()
