"""Direct method dispatch: every method, every kind of bad payload."""

from __future__ import annotations

from collections.abc import Mapping

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.core.methods import MethodReply, Reprovision, SetTelemetryInterval, dispatch, malformed
from agent.core.wire import MethodRequest


def status() -> Mapping[str, object]:
    return {"state": "CONNECTED", "hub": "hub-a.local"}


def call(name: str, payload: object, *, allows: bool = True) -> MethodReply:
    return dispatch(MethodRequest(name, "1", payload), status=status, budget_allows=allows)


@pytest.mark.parametrize("payload", [None, {}, {"force": False}])
def test_reprovision_answers_202_with_effect(payload: object) -> None:
    reply = call("reprovision", payload)
    assert reply.status == 202
    assert reply.effect == Reprovision(force=False)


def test_reprovision_force() -> None:
    assert call("reprovision", {"force": True}, allows=False).effect == Reprovision(force=True)


def test_reprovision_declined_while_budget_spent() -> None:
    reply = call("reprovision", {}, allows=False)
    assert reply.status == 429 and reply.effect is None
    assert isinstance(reply.payload, dict) and "force" in str(reply.payload["message"])


@pytest.mark.parametrize("payload", [{"force": "yes"}, {"forse": True}, [1], "x", 3])
def test_reprovision_bad_payload_400(payload: object) -> None:
    reply = call("reprovision", payload)
    assert reply.status == 400 and reply.effect is None
    assert isinstance(reply.payload, dict) and reply.payload["message"]


def test_get_status() -> None:
    assert call("getStatus", None) == MethodReply(200, dict(status()))
    assert call("getStatus", 5).status == 400


def test_set_telemetry_interval() -> None:
    reply = call("setTelemetryInterval", {"seconds": 15})
    assert reply == MethodReply(200, {"telemetryIntervalSeconds": 15}, SetTelemetryInterval(15.0))


@pytest.mark.parametrize(
    "payload",
    [None, {}, {"seconds": 0}, {"seconds": "5"}, {"seconds": 5, "x": 1}, {"secs": 5}, [5]],
)
def test_set_telemetry_interval_bad_payload(payload: object) -> None:
    reply = call("setTelemetryInterval", payload)
    assert reply.status == 400 and reply.effect is None
    assert "setTelemetryInterval" in str(reply.payload)


def test_unknown_method_404() -> None:
    reply = call("selfDestruct", None)
    assert reply.status == 404 and "selfDestruct" in str(reply.payload)


def test_a_failing_status_provider_is_500_not_a_crash() -> None:
    def broken() -> Mapping[str, object]:
        raise RuntimeError("oops")

    reply = dispatch(MethodRequest("getStatus", "1", None), status=broken, budget_allows=True)
    assert reply.status == 500 and "oops" in str(reply.payload)


def test_malformed_payload_reply() -> None:
    assert malformed("bad").status == 400


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=10,
)


@given(
    name=st.sampled_from(["reprovision", "getStatus", "setTelemetryInterval"])
    | st.text(max_size=10),
    payload=json_values,
    allows=st.booleans(),
)
def test_garbage_payloads_get_an_answer(name: str, payload: object, allows: bool) -> None:
    reply = call(name, payload, allows=allows)
    assert reply.status in (200, 202, 400, 404, 429)
    if reply.status >= 400:
        assert reply.effect is None
    if isinstance(reply.effect, SetTelemetryInterval):
        assert 1 <= reply.effect.seconds <= 86_400
