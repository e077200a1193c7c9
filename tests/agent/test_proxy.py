"""agent.core.proxy (CONNECT bytes, answer parsing, which proxy) and the [network] config."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.config import AgentConfig, parse_config
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
from agent.errors import ConfigError
from agent.runtime.proxy import ProxyAuthError, read_credentials

ROUTE = ProxyRoute("proxy.example", 3128)


def test_connect_request_names_the_target_and_carries_basic_credentials() -> None:
    request = connect_request("hub.example", 443, ("agent", "pa:ss"))
    head, _, rest = request.partition(b"\r\n\r\n")
    assert rest == b""
    lines = head.decode().split("\r\n")
    assert lines[0] == "CONNECT hub.example:443 HTTP/1.1"
    assert "Host: hub.example:443" in lines
    token = base64.b64encode(b"agent:pa:ss").decode()
    assert f"Proxy-Authorization: Basic {token}" in lines
    assert b"Proxy-Authorization" not in connect_request("hub.example", 443)
    assert connect_request("::1", 8883).startswith(b"CONNECT [::1]:8883 HTTP/1.1\r\n")


ANSWER = b"HTTP/1.1 200 Connection established\r\nProxy-agent: tinyproxy/1.11.1\r\n\r\n"


def test_an_answer_fed_whole_or_byte_by_byte_gives_the_same_result() -> None:
    assert ConnectAnswerParser().feed(ANSWER) == ConnectAnswer(200, "Connection established")
    parser = ConnectAnswerParser()
    results = [parser.feed(ANSWER[i : i + 1]) for i in range(len(ANSWER))]
    assert results[:-1] == [None] * (len(ANSWER) - 1)
    assert results[-1] == ConnectAnswer(200, "Connection established")


def test_a_refusal_may_carry_a_body_an_open_tunnel_may_not() -> None:
    refused = b"HTTP/1.0 403 Access violation\r\nContent-Length: 5\r\n\r\nnope!"
    assert ConnectAnswerParser().feed(refused) == ConnectAnswer(403, "Access violation")
    with pytest.raises(ProxyAnswerError, match="after opening the tunnel"):
        ConnectAnswerParser().feed(ANSWER + b"\x16\x03")


@pytest.mark.parametrize(
    "garbage", [b"SSH-2.0-OpenSSH\r\n\r\n", b"HTTP/1.1 abc OK\r\n\r\n", b"\r\n\r\n"]
)
def test_an_answer_that_is_not_http_is_refused(garbage: bytes) -> None:
    with pytest.raises(ProxyAnswerError, match="not an HTTP answer"):
        ConnectAnswerParser().feed(garbage)


def test_an_endless_answer_is_refused() -> None:
    parser = ConnectAnswerParser()
    with pytest.raises(ProxyAnswerError, match="longer than"):
        for _ in range(MAX_ANSWER_BYTES // 1000 + 2):
            parser.feed(b"X" * 1000)


@given(st.binary(max_size=300))
def test_any_bytes_give_an_answer_none_or_the_one_error(data: bytes) -> None:
    try:
        result = ConnectAnswerParser().feed(data)
    except ProxyAnswerError:
        return
    assert result is None or isinstance(result.status, int)


def test_refusals_say_what_to_do() -> None:
    assert "set network.proxy_auth_path" in refusal(ConnectAnswer(407, "Auth"), ROUTE, "h", 443)
    with_credentials = ProxyRoute("proxy.example", 3128, ("u", "p"))
    assert "not accepted" in refusal(ConnectAnswer(407, "Auth"), with_credentials, "h", 443)
    text = refusal(ConnectAnswer(403, "Access violation"), ROUTE, "hub.example", 443)
    assert text.startswith("proxy http://proxy.example:3128 refused CONNECT to hub.example:443")


def test_which_proxy_config_then_environment_then_none() -> None:
    env = {
        "https_proxy": "http://u%40x:p@env.example:8080",
        "no_proxy": ".internal, *.lab,10.1.2.3",
    }
    assert choose_proxy("hub.example", configured=ROUTE, direct=False, environ=env) == ROUTE
    assert choose_proxy("hub.example", configured=None, direct=True, environ=env) is None
    from_env = choose_proxy("hub.example", configured=None, direct=False, environ=env)
    assert from_env == ProxyRoute("env.example", 8080, ("u@x", "p"))
    for bypassed in ("dps.internal", "internal", "10.1.2.3"):
        assert choose_proxy(bypassed, configured=None, direct=False, environ=env) is None
    assert choose_proxy("x", configured=None, direct=False, environ={"HTTPS_PROXY": "p:1"}) == (
        ProxyRoute("p", 1)
    )
    assert choose_proxy("x", configured=None, direct=False, environ={}) is None
    star = {"https_proxy": "http://p:1", "no_proxy": "*"}
    assert choose_proxy("anything", configured=None, direct=False, environ=star) is None
    with pytest.raises(ValueError, match="http://host:port"):
        choose_proxy("x", configured=None, direct=False, environ={"https_proxy": "socks5://p:1"})


BASE = """
[identity]
cert_chain_path = "c.pem"
key_path = "k.pem"
[dps]
id_scope = "0ne00000DEV"
[hal]
backend = "mock"
"""


def _load(tmp_path: Path, extra: str) -> AgentConfig:
    import tomllib

    return parse_config(tomllib.loads(BASE + extra), source=tmp_path / "agent.toml")


def test_network_config_reads_proxy_and_auth_path(tmp_path: Path) -> None:
    config = _load(tmp_path, '[network]\nproxy = "http://10.0.0.1:3128"\nproxy_auth_path = "a"')
    proxy = config.network.http_proxy()
    assert (proxy.host, proxy.port, proxy.auth_path) == ("10.0.0.1", 3128, tmp_path / "a")
    assert _load(tmp_path, '[network]\nproxy = "none"').network.direct


@pytest.mark.parametrize(
    ("extra", "key", "problem"),
    [
        ('[network]\nproxy = "http://u:p@h:1"', "network.proxy", "no credentials in the proxy URL"),
        ('[network]\nproxy = "https://h:1"', "network.proxy", "http:// proxy"),
        ('[network]\nproxy = "http://h:99999"', "network.proxy", "expected http://host:port"),
        ('[network]\nproxy_auth_path = "a"', "network.proxy_auth_path", "set network.proxy"),
        ('[device]\nmodel_id = "urn:x"', "device.model_id", "expected a DTMI"),
    ],
)
def test_bad_network_and_device_config_names_the_key(
    tmp_path: Path, extra: str, key: str, problem: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        _load(tmp_path, extra)
    assert caught.value.key == key and problem in str(caught.value)


def test_device_model_id_defaults_to_the_agent_model_and_may_be_empty(tmp_path: Path) -> None:
    assert _load(tmp_path, "").device.model_id == "dtmi:deviceagent:DeviceAgent;1"
    assert _load(tmp_path, '[device]\nmodel_id = ""').device.model_id == ""


def test_proxy_credentials_file_rules(tmp_path: Path) -> None:
    path = tmp_path / "auth"
    path.write_text("agent:pa:ss\n")
    path.chmod(0o600)
    assert read_credentials(path) == ("agent", "pa:ss")
    path.chmod(0o640)
    with pytest.raises(ProxyAuthError, match="chmod 600"):
        read_credentials(path)
    path.chmod(0o600)
    path.write_text("no colon here\n")
    with pytest.raises(ProxyAuthError, match="user:password"):
        read_credentials(path)
    with pytest.raises(ProxyAuthError, match="cannot read"):
        read_credentials(tmp_path / "missing")
