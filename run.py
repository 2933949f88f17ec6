"""tf_simclr's trainer, as the reference's `run.py`: `python run.py --flagfile=flags/quickstart.cfg`.

A thin shim over the package's command line (`tf_simclr.cli`), kept at the top
level so the reference's published commands run unchanged. `tf_simclr ...` and
`python -m tf_simclr ...` do the same.
"""

import sys

from tf_simclr.cli import main

if __name__ == "__main__":
    sys.exit(main())
