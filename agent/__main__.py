"""``python -m agent``: the same as the ``device-agent`` command."""

from agent.cli.main import main

raise SystemExit(main())
