"""`python -m peftkit` (also what `accelerate launch -m peftkit` runs)."""

from peftkit.cli import main

raise SystemExit(main())
