"""``python -m sigma.sweep``: the command line of :mod:`sigma.sweep.cli`."""

import sys

from sigma.sweep import skip_iri_grammars

skip_iri_grammars()  # this process is the sweep's own: no 3 s grammar compilation

from sigma.sweep.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
