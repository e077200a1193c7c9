"""Hardware abstraction layer: I2C buses, sensor drivers, GPIO, register-level mocks."""
