"""``python -m client`` is hwbpctl."""

import sys

from hwbp.client.cli import main

sys.exit(main())
