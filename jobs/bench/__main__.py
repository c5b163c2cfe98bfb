"""`python -m jobs.bench`: the same as `codecsep bench`."""

import sys

from jobs.cli import main

raise SystemExit(main(["bench", *sys.argv[1:]], program=True))
