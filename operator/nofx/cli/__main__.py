"""`python -m nofx.cli`, as the tests and the demo run it."""

import sys

from nofx.cli import main

sys.exit(main())
