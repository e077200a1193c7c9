"""One IoT Hub connection's protocol, without I/O: subscriptions, twin, methods, telemetry.

Theory of operation
-------------------
The daemon makes a :class:`HubSession` for each hub connection that reaches CONNACK 0
and feeds it what arrives; the session answers with actions
(:class:`~agent.core.actions.Subscribe`, :class:`~agent.core.actions.Publish`) and *effects* for the
daemon (:class:`SettingsChanged`, :class:`~agent.core.methods.Reprovision`).

On connect: subscribe to twin responses, desired pushes, method calls and
cloud-to-device messages, then GET the full twin. Its desired section is applied
(``full=True``) and the reported section the hub *actually* holds is diffed against
what the agent wants to report, so one minimal PATCH brings it up to date. Desired
pushes are applied as patches; a push or document whose ``$version`` is not newer
than the last one applied is ignored.

A new telemetry interval from a method is applied before its "200" is sent; a
reprovision is handed out only when the "202" reply's PUBACK arrives (or the daemon
gives up waiting), so the cloud hears it before the device disconnects.

A twin GET that is not answered (or answered with an error) within
``twin_get_timeout_s`` is sent again, at most :data:`TWIN_GET_ATTEMPTS` times in all
(the session asks the daemon for the timer :data:`TWIN_GET_TIMER`); then the session
carries on without it: it reports the whole reported document, as if the hub held
nothing, and takes desired properties from pushes. A late answer to any of its GETs
is still applied.

Anything malformed from the hub is logged and dropped; a method call with a bad
payload is still answered (400). Nothing in here raises for the cloud's input.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from agent.core import methods, twin, wire
from agent.core.actions import CancelTimer, Publish, StartTimer, Subscribe
from agent.core.telemetry import Publisher
from agent.core.text import clip
from agent.errors import ProtocolError

log = logging.getLogger(__name__)

METHOD_TAG = "method:"
TWIN_TAG = "twin"
#: The session's one timer: the twin GET's response timeout.
TWIN_GET_TIMER = "twin.get"
#: Twin GETs sent (the first one included) before the session carries on without one.
TWIN_GET_ATTEMPTS = 3


@dataclass(frozen=True)
class SettingsChanged:
    """The twin or a method changed what is in force."""

    settings: twin.Settings


SessionEffect = SettingsChanged | methods.Reprovision
SessionAction = Publish | Subscribe | StartTimer | CancelTimer | SessionEffect


@dataclass(frozen=True)
class ReportedContext:
    """Everything the reported document says besides the settings."""

    agent_version: str
    hub: str
    device_id: str
    provisioned_at: str | None
    last_reprovision_reason: str | None
    sensors: tuple[twin.SensorInfo, ...]
    errors: Mapping[str, str]
    #: The telemetry buffer's kind and drop counters (None: not reported).
    telemetry_buffer: Mapping[str, object] | None = None
    #: ``reported.certificate`` (:func:`agent.core.twin.certificate_report`), if known.
    certificate: Mapping[str, object] | None = None


class HubSession:
    """The protocol of one hub connection."""

    def __init__(
        self,
        *,
        device_id: str,
        publisher: Publisher,
        settings: twin.Settings,
        default_interval_s: float,
        context: Callable[[], ReportedContext],
        status: Callable[[], Mapping[str, object]],
        budget_allows: Callable[[], bool],
        twin_get_timeout_s: float = 30.0,
    ) -> None:
        self.device_id = device_id
        self.twin_get_timeout_s = twin_get_timeout_s
        self.publisher = publisher
        self.settings = settings
        self.default_interval_s = default_interval_s
        self._context = context
        self._status = status
        self._budget_allows = budget_allows
        self._next_rid = 0
        #: The rids of this connection's twin GETs not answered yet.
        self._twin_get_rids: set[str] = set()
        self.twin_get_attempts = 0
        self._desired_version: int | None = None
        #: What the hub holds as reported properties (None until the twin GET answered).
        self._hub_reported: dict[str, object] | None = None
        #: Method effects waiting for their reply's PUBACK, by tag.
        self._pending_effects: dict[str, methods.Reprovision] = {}
        self.rejected_desired: tuple[str, ...] = ()

    # -- inputs ------------------------------------------------------------------------------

    def on_connected(self) -> list[SessionAction]:
        """Subscribe and fetch the twin; start telemetry."""
        self.publisher.connect(self.device_id)
        return [
            Subscribe(wire.TWIN_RESPONSE_FILTER),
            Subscribe(wire.TWIN_DESIRED_FILTER),
            Subscribe(wire.METHODS_FILTER),
            Subscribe(wire.c2d_filter(self.device_id)),
            *self._twin_get(),
            *self.publisher.pump(),
        ]

    def on_timer(self, name: str) -> list[SessionAction]:
        """The session's timer fired: send the twin GET again, or carry on without it."""
        if name != TWIN_GET_TIMER or not self._twin_get_rids or self._hub_reported is not None:
            return []
        if self.twin_get_attempts < TWIN_GET_ATTEMPTS:
            log.warning("twin GET not answered within %g s; asking again", self.twin_get_timeout_s)
            return self._twin_get()
        log.warning(
            "twin GET not answered after %d attempts; reporting without it", self.twin_get_attempts
        )
        self._hub_reported = {}
        return self.report()

    def on_disconnected(self) -> None:
        """The connection is gone (in-flight telemetry will be sent again)."""
        self.publisher.disconnect()
        self._pending_effects.clear()

    def on_message(self, topic: str, payload: bytes) -> list[SessionAction]:
        """A PUBLISH from the hub."""
        try:
            message = wire.parse_hub_message(topic, payload)
        except wire.MalformedMethodPayload as exc:
            return [self._reply(exc.rid, methods.malformed(exc.problem))]
        except ProtocolError as exc:
            log.warning("dropping a malformed message from the hub: %s", clip(exc))
            return []
        match message:
            case wire.MethodRequest():
                return self._on_method(message)
            case wire.DesiredPatch(version=version, patch=patch):
                return self._on_desired(patch, version, full=False)
            case wire.TwinResponse():
                return self._on_twin_response(message)
            case wire.DeviceMessage(properties=props, body=body):
                log.info(
                    "cloud-to-device message (%d bytes, properties %s)", len(body), clip(props)
                )
                return []

    def on_published(self, tag: str, mid: int) -> None:
        """The transport gave ``mid`` to a publish tagged ``tag``."""
        if tag.startswith(METHOD_TAG):
            effect = self._pending_effects.pop(tag, None)
            if effect is not None:
                self._pending_effects[f"{METHOD_TAG}mid:{mid}"] = effect
        elif tag != TWIN_TAG:
            self.publisher.sent(tag, mid)

    def on_puback(self, mid: int) -> list[SessionAction]:
        """A PUBACK: telemetry is done, or a method reply is out and its effect may run."""
        if self.publisher.acked(mid):
            return list(self.publisher.pump())
        effect = self._pending_effects.pop(f"{METHOD_TAG}mid:{mid}", None)
        return [effect] if effect is not None else []

    def take_pending_effects(self) -> list[SessionEffect]:
        """Effects whose PUBACK never came (the daemon stops waiting)."""
        effects: list[SessionEffect] = list(self._pending_effects.values())
        self._pending_effects.clear()
        return effects

    @property
    def has_pending_effects(self) -> bool:
        """Whether a method's effect waits for its reply's PUBACK."""
        return bool(self._pending_effects)

    def pump(self) -> list[SessionAction]:
        """Telemetry publishes to make now."""
        return list(self.publisher.pump())

    def report(self) -> list[SessionAction]:
        """A PATCH with whatever changed in the reported document (if the twin is known)."""
        if self._hub_reported is None:
            return []
        wanted = self._reported_document()
        patch = twin.reported_patch(self._hub_reported, wanted)
        if not patch:
            return []
        self._hub_reported = wanted
        topic, payload = wire.format_twin_patch_reported(self._rid(), patch)
        return [Publish(topic, payload, 1, tag=TWIN_TAG)]

    # -- internals -----------------------------------------------------------------------------

    def _twin_get(self) -> list[SessionAction]:
        rid = self._rid()
        self._twin_get_rids.add(rid)
        self.twin_get_attempts += 1
        topic, payload = wire.format_twin_get(rid)
        return [
            Publish(topic, payload, 1, tag=TWIN_TAG),
            StartTimer(TWIN_GET_TIMER, self.twin_get_timeout_s),
        ]

    def _rid(self) -> str:
        self._next_rid += 1
        return str(self._next_rid)

    def _reported_document(self) -> dict[str, object]:
        ctx = self._context()
        return twin.build_reported(
            agent_version=ctx.agent_version,
            hub=ctx.hub,
            device_id=ctx.device_id,
            provisioned_at=ctx.provisioned_at,
            last_reprovision_reason=ctx.last_reprovision_reason,
            sensors=ctx.sensors,
            settings=self.settings,
            errors=ctx.errors,
            telemetry_buffer=ctx.telemetry_buffer,
            certificate=ctx.certificate,
        )

    def _reply(self, rid: str, reply: methods.MethodReply) -> Publish:
        topic, payload = wire.format_method_response(rid, reply.status, reply.payload)
        return Publish(topic, payload, 1, tag=f"{METHOD_TAG}{rid}")

    def _on_method(self, request: wire.MethodRequest) -> list[SessionAction]:
        reply = methods.dispatch(request, status=self._status, budget_allows=self._budget_allows())
        log.info("method %s -> %d", clip(request.name, 64), reply.status)
        publish = self._reply(request.rid, reply)
        actions: list[SessionAction] = [publish]
        match reply.effect:
            case methods.SetTelemetryInterval(seconds=seconds):
                interval_ack = twin.ack(seconds, 200, None, "set by setTelemetryInterval")
                self.settings = twin.Settings(
                    telemetry_interval_s=seconds,
                    disabled_sensors=self.settings.disabled_sensors,
                    interval_ack=interval_ack,
                    sensor_acks=self.settings.sensor_acks,
                )
                # Applied before the 200 goes out: whoever hears "200" sees it in force.
                actions.insert(0, SettingsChanged(self.settings))
                actions.extend(self.report())
            case methods.Reprovision():
                assert publish.tag is not None
                self._pending_effects[publish.tag] = reply.effect
            case None:
                pass
        return actions

    def _on_desired(
        self, desired: Mapping[str, object], version: int | None, *, full: bool
    ) -> list[SessionAction]:
        if (
            version is not None
            and self._desired_version is not None
            and version <= self._desired_version
        ):
            log.info(
                "ignoring desired properties version %s (have %s)", version, self._desired_version
            )
            return self.report()
        if version is not None:
            self._desired_version = version
        result = twin.apply_desired(
            desired,
            version=version,
            current=self.settings,
            default_interval_s=self.default_interval_s,
            sensors=[s.name for s in self._context().sensors],
            full=full,
        )
        for reason in result.rejected:
            log.warning("desired property rejected: %s", clip(reason))
        self.rejected_desired = result.rejected
        changed = result.settings != self.settings
        self.settings = result.settings
        actions: list[SessionAction] = [SettingsChanged(self.settings)] if changed else []
        return [*actions, *self.report()]

    def _on_twin_response(self, response: wire.TwinResponse) -> list[SessionAction]:
        if response.rid not in self._twin_get_rids:
            if response.status >= 300:
                log.warning("twin request %s failed with %d", response.rid, response.status)
            return []
        if response.status != 200:
            log.warning("twin GET failed with %d (asked again when it times out)", response.status)
            return []
        try:
            document = wire.parse_twin_document(response.body)
        except ProtocolError as exc:
            log.warning("twin GET: %s", clip(exc))
            return []
        self._twin_get_rids.clear()
        self._hub_reported = {k: v for k, v in document.reported.items() if not k.startswith("$")}
        actions = self._on_desired(document.desired, document.desired_version, full=True)
        return [CancelTimer(TWIN_GET_TIMER), *actions]


def sensor_infos(sensors: Sequence[object]) -> tuple[twin.SensorInfo, ...]:
    """Twin descriptions of HAL sensors (name, part, units of each quantity)."""
    from hal.sensor import UNITS

    infos = []
    for sensor in sensors:
        name = str(getattr(sensor, "name", ""))
        part = str(getattr(sensor, "part", ""))
        quantities = tuple(getattr(sensor, "quantities", ()))
        infos.append(twin.SensorInfo(name, part, {q: UNITS.get(q, "") for q in quantities}))
    return tuple(infos)
