"""``python -m probe`` = ``repa-probe``."""

from probe.cli import main

raise SystemExit(main())
