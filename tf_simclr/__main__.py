"""`python -m tf_simclr ...`: the command line (see `tf_simclr.cli`)."""

import sys

from tf_simclr.cli import main

sys.exit(main())
