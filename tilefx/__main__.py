"""``python -m tilefx``: the command line (see ``tilefx.compiler.cli``)."""

import sys

from tilefx.compiler.cli import main

sys.exit(main())
