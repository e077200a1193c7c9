"""The device's identity: keystores, their checks, and how the daemon loads them.

What lives here: the :class:`~agent.identity.keystore.Keystore` interface and the
:class:`~agent.identity.keystore.Identity` it yields (:mod:`~agent.identity.keystore`),
the file keystore and its checks (:mod:`~agent.identity.file_keystore`, the only
importer of ``cryptography`` in the agent), the child-process loader
(:mod:`~agent.identity.child`: a forked child, or ``python -m agent.identity.child``) and the
warm-boot identity cache (:mod:`~agent.identity.cache`).

May import: :mod:`agent.core`, :mod:`agent.store` (the cache is a file in the state
directory, written with the store's atomic writes), :mod:`agent.config`,
:mod:`agent.errors`. Never the runtime or the CLI.
"""
