"""Choosing the hardware: the real I2C buses or a simulated board, explicitly.

:func:`open_backend` is the only way in, and the caller always names the kind
(``"smbus"`` or ``"mock"``): there is no fallback from one to the other. A backend
hands out buses by number, says how drivers should wait and tell the time
(``sleep`` and ``monotonic``: real time, or the simulation's clock) and which
gpiozero pin factory GPIO devices should use (``None`` on real hardware: gpiozero's
own choice; a ``MockFactory`` on the mock).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal, Protocol, get_args, runtime_checkable

from hal.exc import UnknownBackendError

if TYPE_CHECKING:
    from hal.bus import I2CBus
    from hal.drivers.base import Monotonic, Sleep
    from hal.sim.board import Board
    from hal.sim.clock import SimClock

BackendKind = Literal["smbus", "mock"]
BACKEND_KINDS: tuple[str, ...] = get_args(BackendKind)


@runtime_checkable
class Backend(Protocol):
    """A source of I2C buses (and of the GPIO pin factory to go with them)."""

    @property
    def kind(self) -> str:
        """``"smbus"`` or ``"mock"``."""
        ...

    @property
    def sleep(self) -> Sleep:
        """How drivers wait for a measurement on this backend."""
        ...

    @property
    def monotonic(self) -> Monotonic:
        """The clock drivers use to tell when a conversion is done on this backend."""
        ...

    @property
    def pin_factory(self) -> object | None:
        """The gpiozero pin factory for GPIO devices (None: gpiozero's default)."""
        ...

    def bus(self, number: int) -> I2CBus:
        """Bus ``number``; :class:`hal.exc.BusUnavailableError` if it cannot be had."""
        ...

    def close(self) -> None:
        """Release every bus."""
        ...


class MockBackend:
    """Buses of a simulated :class:`~hal.sim.board.Board`; ``board`` is public so tests
    and the CLI can inject faults and set the environment."""

    kind = "mock"

    def __init__(self, board: Board) -> None:
        self.board = board
        self._pin_factory: object | None = None

    @property
    def sleep(self) -> Sleep:
        """The board clock's sleep (instant with a manual clock)."""
        return self.board.clock.sleep

    @property
    def monotonic(self) -> Monotonic:
        """The board clock's time (so conversions finish in simulated time)."""
        return self.board.clock.monotonic

    @property
    def pin_factory(self) -> object:
        """A gpiozero ``MockFactory``, created on first use."""
        if self._pin_factory is None:
            from hal.gpio import mock_pin_factory

            self._pin_factory = mock_pin_factory()
        return self._pin_factory

    def bus(self, number: int) -> I2CBus:
        """Simulated bus ``number``."""
        return self.board.bus(number)

    def close(self) -> None:
        """Release the pin factory if one was made."""
        factory, self._pin_factory = self._pin_factory, None
        close = getattr(factory, "close", None)
        if callable(close):
            close()


def open_backend(
    kind: BackendKind,
    *,
    mock_board: str = "default",
    seed: int | None = None,
    clock: SimClock | None = None,
) -> Backend:
    """Open the backend named by ``kind``.

    ``"smbus"``: the real ``/dev/i2c-N`` buses (opened lazily, on first use).
    ``"mock"``: the simulated board ``mock_board`` (see :mod:`hal.sim.boards`), its
    environment seeded with ``seed``, its time from ``clock`` (real time by default).
    """
    if kind == "smbus":
        from hal.smbus_backend import SMBusBackend

        return SMBusBackend()
    if kind == "mock":
        from hal.sim.boards import BOARDS, build_board

        if mock_board not in BOARDS:
            raise UnknownBackendError(
                f"unknown mock board {mock_board!r}; known: {', '.join(sorted(BOARDS))}"
            )
        return MockBackend(build_board(mock_board, seed=seed, clock=clock))
    raise UnknownBackendError(f"unknown backend {kind!r}; choose one of {', '.join(BACKEND_KINDS)}")
