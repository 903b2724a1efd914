"""``python -m sigma.sweep``: the command line of :mod:`sigma.sweep.cli`."""

import sys

from sigma.sweep.cli import main

if __name__ == "__main__":
    sys.exit(main())
