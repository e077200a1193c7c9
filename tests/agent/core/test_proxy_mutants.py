"""The HTTP proxy core (agent.core.proxy): exact requests, answers and choices that
mutation testing found unpinned (issue #14)."""

from __future__ import annotations

import pytest

from agent.core.proxy import (
    MAX_ANSWER_BYTES,
    ConnectAnswer,
    ConnectAnswerParser,
    ProxyAnswerError,
    ProxyRoute,
    choose_proxy,
    connect_request,
    refusal,
)

ENV = {"https_proxy": "http://p.example:3128"}


def test_the_connect_request_exactly() -> None:
    assert connect_request("hub.example", 8883, ("u", "p w")) == (
        b"CONNECT hub.example:8883 HTTP/1.1\r\nHost: hub.example:8883\r\n"
        b"Proxy-Authorization: Basic dTpwIHc=\r\nProxy-Connection: Keep-Alive\r\n\r\n"
    )


@pytest.mark.parametrize(
    ("head", "status", "reason"),
    [
        (b"HTTP/1.1 200 Connection established\r\nVia: x\r\n\r\n", 200, "Connection established"),
        (b"HTTP/1.0 200\r\n\r\n", 200, ""),
        (b"HTTP/1.1 403  Forbidden here \r\n\r\nbody\r\n\r\nmore", 403, "Forbidden here"),
    ],
)
def test_answers(head: bytes, status: int, reason: str) -> None:
    assert ConnectAnswerParser().feed(head) == ConnectAnswer(status, reason)


@pytest.mark.parametrize(
    ("head", "message"),
    [
        (b"HTTP/1.1\r\n\r\n", "not an HTTP answer from the proxy: 'HTTP/1.1'"),
        (b"HTTP/2 200 OK\r\n\r\n", "not an HTTP answer from the proxy: 'HTTP/2 200 OK'"),
        (b"HTTP/1.1 2x0 OK\r\n\r\n", "not an HTTP answer from the proxy: 'HTTP/1.1 2x0 OK'"),
        (b"HTTP/1.1 200 OK\r\n\r\nX", "proxy sent data after opening the tunnel, before TLS"),
        (b"x" * 200 + b"\r\n\r\n", f"not an HTTP answer from the proxy: {'x' * 80!r}"),
    ],
)
def test_bad_answers(head: bytes, message: str) -> None:
    with pytest.raises(ProxyAnswerError) as info:
        ConnectAnswerParser().feed(head)
    assert str(info.value) == message


def test_an_answer_without_an_end_is_bounded() -> None:
    parser = ConnectAnswerParser()
    assert parser.feed(b"x" * MAX_ANSWER_BYTES) is None  # exactly the limit: still waiting
    with pytest.raises(ProxyAnswerError) as info:
        parser.feed(b"x")
    assert str(info.value) == f"proxy answer longer than {MAX_ANSWER_BYTES} bytes"


def test_refusals_say_what_to_do() -> None:
    route = ProxyRoute("p", 3128)
    authed = ProxyRoute("p", 3128, ("u", "x"))
    base = "proxy http://p:3128 refused CONNECT to h:8883: "
    assert refusal(ConnectAnswer(407, "Auth"), route, "h", 8883) == (
        base + "407 Auth (it wants credentials: set network.proxy_auth_path)"
    )
    assert refusal(ConnectAnswer(407, "Auth"), authed, "h", 8883) == (
        base + "407 Auth (the credentials in network.proxy_auth_path were not accepted)"
    )
    assert refusal(ConnectAnswer(403, "No"), route, "h", 8883) == (
        base + "403 No (the proxy's rules forbid this host or port)"
    )
    assert refusal(ConnectAnswer(404, "Gone"), route, "h", 8883) == base + "404 Gone"


@pytest.mark.parametrize(
    ("no_proxy", "direct"),
    [
        ("hub.example", True),
        ("HUB.example.", True),
        (".example", True),
        ("example..", True),
        ("", False),
        (" , other.example,hub.example", True),
        ("other.example", False),
        ("ub.example", False),
        ("hub.example:8883", True),
        ("*", True),
        ("::1", False),
    ],
)
def test_no_proxy(no_proxy: str, direct: bool) -> None:
    chosen = choose_proxy(
        "Hub.Example.", configured=None, direct=False, environ={**ENV, "no_proxy": no_proxy}
    )
    assert (chosen is None) is direct


def test_no_proxy_in_upper_case_and_the_environment_route() -> None:
    env = {"HTTPS_PROXY": "http://u%40x:p%3A@p.example", "NO_PROXY": "other"}
    assert choose_proxy("hub", configured=None, direct=False, environ=env) == ProxyRoute(
        "p.example", 80, ("u@x", "p:")
    )
    only_user = {"https_proxy": "http://u@p.example:8080"}
    assert choose_proxy("hub", configured=None, direct=False, environ=only_user) == ProxyRoute(
        "p.example", 8080, ("u", "")
    )
    assert (
        choose_proxy("hub", configured=None, direct=False, environ={**ENV, "NO_PROXY": "hub"})
        is None
    )
