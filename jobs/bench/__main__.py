"""`python -m jobs.bench`."""

from jobs.bench import main

raise SystemExit(main())
