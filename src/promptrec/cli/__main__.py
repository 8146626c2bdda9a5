"""``python -m promptrec.cli``."""

from . import main

main()
