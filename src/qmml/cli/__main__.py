"""``python -m qmml.cli``: the ``qmml`` command."""
import sys

from qmml.cli import main

sys.exit(main())
