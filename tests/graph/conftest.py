"""Fixtures for the Graph transport: settings that send through the sandbox's fake Microsoft Graph."""

from __future__ import annotations

import pytest

from smtp_oauth.sandbox.runner import Sandbox
from smtp_oauth.settings.models import Settings


@pytest.fixture
def graph_settings(smtp_oauth_sandbox: Sandbox) -> Settings:
    """transport = "graph", client credentials with the sandbox app's secret."""
    smtp_oauth_sandbox.write_config(transport="graph")
    return smtp_oauth_sandbox.settings()
