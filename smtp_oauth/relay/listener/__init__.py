"""The relay's SMTP listener: aiosmtpd hooks, local logins, sessions and intake into the spool."""
