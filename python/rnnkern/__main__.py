"""`python -m rnnkern`: the command line (see `rnnkern.cli`)."""
from .cli import main

raise SystemExit(main())
