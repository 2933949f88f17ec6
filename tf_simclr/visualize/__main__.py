"""`python -m tf_simclr.visualize <views|embedding|curve> ...` = `tf_simclr visualize ...`."""

import sys

from tf_simclr.cli import main

sys.exit(main([sys.argv[0], "visualize", *sys.argv[1:]]))
