"""``python -m train``: see `train.cli`."""

from .cli import main

main()
