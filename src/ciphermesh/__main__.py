"""`python -m ciphermesh`: the same entry point as the console script."""

from ciphermesh.cli.main import main

raise SystemExit(main())
