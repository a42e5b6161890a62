"""``python -m vitres``: the command line."""

import sys

from vitres.cli import main

sys.exit(main())
