"""`python -m tokenpulse` is the `tokenpulse` command."""

import sys

from tokenpulse.cli import main

sys.exit(main())
