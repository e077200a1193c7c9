"""One module and one class per part, each named after it.

Every driver takes an :class:`hal.bus.I2CBus` and an address; none opens hardware.
"""
