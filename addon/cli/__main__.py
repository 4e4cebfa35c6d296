"""`python -m routecar.cli ...` is `routecar ...`."""

import sys

from .main import main

sys.exit(main())
