"""Microsoft Graph ``sendMail``: the transport for tenants and mailboxes without SMTP AUTH.

``transport.GraphTransport`` (a ``smtp_oauth.transport.Transport``), ``client.GraphClient``
(one app's HTTPS connection, limits and Retry-After, shared between transports), ``mime`` (Bcc
and quoted-printable fixes), ``large`` (drafts and upload sessions for messages over ~3 MB),
``errors`` (Graph's answers as smtp_oauth errors) and ``fallback`` (SMTP, then Graph on 5.7.139).
httpx is imported only in this package.
"""
