"""The client assertion of workload identity federation: a token file the platform rotates.

AKS's workload identity webhook projects a service account token into the pod and names it in
``$AZURE_FEDERATED_TOKEN_FILE``; the kubelet replaces it before it expires (hourly by default).
GitHub Actions' OIDC token can be written to a file by a step the same way. Entra exchanges that
token (``client_assertion``, type jwt-bearer) for an access token of the app that trusts its
issuer and subject as a federated identity credential
(https://learn.microsoft.com/en-us/entra/workload-id/workload-identity-federation).

MSAL calls ``client_assertion`` only when a token request goes on the wire, so reading the file
at every call is cheap and always presents the newest token: never keep one in memory.
"""

from __future__ import annotations

from pathlib import Path

from smtp_oauth.errors import ConfigurationError, TokenError

__all__ = ["FederatedTokenFile"]

_MAX_TOKEN_BYTES = 64 * 1024  # a JWT of a few KB; anything this big is not one


class FederatedTokenFile:
    """A no-argument callable for msal's ``{"client_assertion": ...}``: the file's current token."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path).expanduser()

    def __repr__(self) -> str:
        return f"FederatedTokenFile({str(self.path)!r})"

    def __call__(self) -> str:
        try:
            with self.path.open("rb") as handle:
                raw = handle.read(_MAX_TOKEN_BYTES + 1)
        except FileNotFoundError as exc:
            raise ConfigurationError(
                f"identity.federated_token_file {self.path} does not exist",
                key="identity.federated_token_file",
                hint='On AKS, label the pod azure.workload.identity/use: "true" and give it a service '
                "account annotated with azure.workload.identity/client-id; in GitHub Actions, write the "
                "job's OIDC token to this file in an earlier step (see the README).",
            ) from exc
        except OSError as exc:
            raise ConfigurationError(
                f"cannot read identity.federated_token_file {self.path}: {exc.strerror}",
                key="identity.federated_token_file",
            ) from exc
        token = raw.decode("ascii", "replace").strip()
        if len(raw) > _MAX_TOKEN_BYTES or token.count(".") != 2:
            # Empty while the platform rewrites it, or not a JWT at all: a later attempt may succeed.
            raise TokenError(
                f"identity.federated_token_file {self.path} does not hold a JWT (the workload's token)",
                error="invalid_federated_token",
                temporary=not token,
                hint="Point identity.federated_token_file at the file the platform writes the OIDC token to.",
            )
        return token
