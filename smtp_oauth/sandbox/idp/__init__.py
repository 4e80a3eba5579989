"""The sandbox's fake Entra ID: OAuth 2.0 endpoints over HTTPS that MSAL talks to."""
