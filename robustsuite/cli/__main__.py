"""``python -m robustsuite.cli`` runs the command line too (``python -m robustsuite`` is the usual way)."""
import sys

from . import main

sys.exit(main())
