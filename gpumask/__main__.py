"""`python -m gpumask show ...`: the same as the `gpumask` console script (:mod:`gpumask.cli`)."""

from gpumask.cli import main

raise SystemExit(main())
