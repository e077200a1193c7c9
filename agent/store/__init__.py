"""What the agent keeps on disk: state and assignment, budget, status, atomic writes.

What lives here: atomic, durable small files and their corrupt-file handling
(:mod:`~agent.store.files`), ``state.json`` bound to its identity and the
reprovisioning budget's file (:mod:`~agent.store.state`), and what
``device-agent status`` / ``image-prep`` read and remove (:mod:`~agent.store.status`).
The durable telemetry buffer goes here too, behind the queue interface of
:mod:`agent.core.telemetry`.

May import: :mod:`agent.core`, :mod:`agent.config`, :mod:`agent.errors`. Never the
identity layer, the runtime or the CLI.
"""
