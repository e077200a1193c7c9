"""The command line: ``device-agent`` and its commands, and ``device-agent check``.

What lives here: argument parsing, the commands and their exit codes
(:mod:`~agent.cli.main`, the console script's ``main``), and the pre-flight checks
(:mod:`~agent.cli.check`).

May import every agent layer (it is the top one) and :mod:`hal`; nothing imports it
but ``python -m agent``.
"""
