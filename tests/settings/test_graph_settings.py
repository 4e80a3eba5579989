"""Specification of the transport keys: `transport`, `fallback_transport`, `[graph]` and token scopes."""

from __future__ import annotations

from pathlib import Path

import pytest

from smtp_oauth.errors import ConfigurationError
from smtp_oauth.settings.loading import load_settings
from smtp_oauth.settings.models import Settings

MINIMAL = """
[identity]
tenant_id = "contoso.onmicrosoft.com"
client_id = "11111111-2222-3333-4444-555555555555"
client_secret = "s3cret-Value~do-not-echo"
{identity}

[smtp]
username = "sender@contoso.com"
"""


@pytest.fixture(autouse=True)
def _in_tmp(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)


def settings(tmp_path: Path, top: str = "", extra: str = "", identity: str = "") -> Settings:
    path = tmp_path / "smtp-oauth.toml"
    path.write_text(top + "\n" + MINIMAL.format(identity=identity) + "\n" + extra)
    return load_settings(path)


def test_transport_defaults_to_smtp_without_fallback(tmp_path: Path) -> None:
    """A config of the first version sends through SMTP and falls back to nothing."""
    loaded = settings(tmp_path)
    assert loaded.transport == "smtp"
    assert loaded.fallback_transport is None


def test_graph_defaults_for_client_credentials(tmp_path: Path) -> None:
    """[graph] defaults: Graph's global root, smtp.username's mailbox, the .default scope, 60 s."""
    loaded = settings(tmp_path, 'transport = "graph"')
    assert loaded.graph_endpoint == "https://graph.microsoft.com"
    assert loaded.graph_mailbox == "sender@contoso.com"
    assert loaded.graph_scopes == ["https://graph.microsoft.com/.default"]
    assert loaded.graph.timeout == 60


def test_graph_scope_for_delegated_flows_is_mail_send(tmp_path: Path) -> None:
    """A delegated flow asks Graph for Mail.Send, not .default."""
    loaded = settings(tmp_path, identity='flow = "device_code"')
    assert loaded.graph_scopes == ["https://graph.microsoft.com/Mail.Send"]


@pytest.mark.parametrize(
    ("cloud", "endpoint"),
    [("usgov", "https://graph.microsoft.us"), ("china", "https://microsoftgraph.chinacloudapi.cn")],
)
def test_graph_endpoint_and_scope_follow_the_cloud(tmp_path: Path, cloud: str, endpoint: str) -> None:
    """identity.cloud picks Graph's national cloud root, which is also the scope's resource."""
    loaded = settings(tmp_path, identity=f'cloud = "{cloud}"')
    assert loaded.graph_endpoint == endpoint
    assert loaded.graph_scopes == [f"{endpoint}/.default"]


def test_an_explicit_endpoint_does_not_change_the_scope(tmp_path: Path) -> None:
    """graph.endpoint (a proxy, the sandbox) moves the requests, not the token's audience."""
    loaded = settings(
        tmp_path, extra='[graph]\nendpoint = "https://graph.example.test/"\nmailbox = "x@contoso.com"'
    )
    assert loaded.graph_endpoint == "https://graph.example.test"
    assert loaded.graph_mailbox == "x@contoso.com"
    assert loaded.graph_scopes == ["https://graph.microsoft.com/.default"]


def test_a_plain_http_endpoint_is_refused(tmp_path: Path) -> None:
    """graph.endpoint must be https: a bearer token never travels in clear text."""
    with pytest.raises(ConfigurationError) as caught:
        settings(tmp_path, extra='[graph]\nendpoint = "http://graph.microsoft.com"')
    assert "graph.endpoint" in str(caught.value)


def test_fallback_to_the_transport_itself_is_refused(tmp_path: Path) -> None:
    """fallback_transport = "graph" with transport = "graph" is a configuration error naming both."""
    with pytest.raises(ConfigurationError) as caught:
        settings(tmp_path, 'transport = "graph"\nfallback_transport = "graph"')
    assert "fallback_transport" in str(caught.value)


def test_unknown_transport_is_refused(tmp_path: Path) -> None:
    """transport takes smtp or graph only."""
    with pytest.raises(ConfigurationError) as caught:
        settings(tmp_path, 'transport = "ews"')
    assert "transport" in str(caught.value)


def test_token_scopes_by_resource(tmp_path: Path) -> None:
    """token_scopes: the transport's by default, exchange, graph, or <URI>/.default."""
    loaded = settings(tmp_path, 'transport = "graph"')
    assert loaded.token_scopes() == ["https://graph.microsoft.com/.default"]
    assert loaded.token_scopes("exchange") == ["https://outlook.office365.com/.default"]
    assert loaded.token_scopes("graph") == ["https://graph.microsoft.com/.default"]
    assert loaded.token_scopes("https://vault.azure.net/") == ["https://vault.azure.net/.default"]
    assert settings(tmp_path).token_scopes() == ["https://outlook.office365.com/.default"]
