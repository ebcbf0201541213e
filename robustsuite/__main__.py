"""``python -m robustsuite`` (and ``torchrun -m robustsuite``) runs the command line."""
import sys

from .cli import main

sys.exit(main())
