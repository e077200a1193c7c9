"""The sans-I/O core: every decision the agent makes, and no I/O at all.

What lives here: the lifecycle table (:mod:`~agent.core.lifecycle`), DPS registration
(:mod:`~agent.core.provisioning`), the hub session (:mod:`~agent.core.session`) with
its twin and direct-method handling (:mod:`~agent.core.twin`,
:mod:`~agent.core.methods`), the telemetry policy with its queue interface and
publisher (:mod:`~agent.core.telemetry`), backoff, the reprovisioning budget as data
(:mod:`~agent.core.budget`), the MQTT topic/payload codec (:mod:`~agent.core.wire`),
and the shared vocabulary: the injected clock (:mod:`~agent.core.clock`) and the
actions (:mod:`~agent.core.actions`). Events in, actions out; time and randomness are
injected.

May import: the standard library's pure modules, :mod:`agent.config`,
:mod:`agent.errors`, and :mod:`hal.sensor` (the sensor types). Never: sockets, ssl,
select, threading, subprocess, sqlite3, paho, cryptography, hal's backends, drivers,
GPIO or simulator, nor any other agent layer (import-linter contracts in
pyproject.toml).
"""
