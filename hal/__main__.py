"""``python -m hal sensors scan|read ...``: the HAL's CLI without the agent."""

from hal.cli import main

raise SystemExit(main())
