"""``python -m neurodash ...``: the same as the ``neurodash`` command."""

import sys

from neurodash.cli import main

sys.exit(main())
