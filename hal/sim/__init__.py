"""Register-level simulated chips for the mock backend.

A :class:`~hal.sim.board.Board` holds simulated buses with chips that answer I2C
transfers as the silicon does (register maps, command sets, CRCs, measurement
times, NACKs while busy), so the real drivers run unchanged on a laptop or in CI.
"""
