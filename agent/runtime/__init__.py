"""The I/O shell: it carries out what the core decides, and owns every socket and timer.

What lives here: the MQTT transport (:mod:`~agent.runtime.transport`, the only module
that imports paho-mqtt; endpoints, TLS and its events in :mod:`~agent.runtime.endpoint`),
the main loop and its timers (:mod:`~agent.runtime.loop`), the executor that routes
connection events to the cores and carries out their actions
(:mod:`~agent.runtime.executor`), the composition root that builds and starts the agent
(:mod:`~agent.runtime.daemon`), sd_notify (:mod:`~agent.runtime.sdnotify`) and logging
(:mod:`~agent.runtime.logs`).

May import: :mod:`agent.identity`, :mod:`agent.store`, :mod:`agent.core`,
:mod:`agent.config`, :mod:`agent.errors`, and :mod:`hal`. Never the CLI.
"""
