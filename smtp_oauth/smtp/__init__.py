"""The SMTP transport: aiosmtplib sessions authenticated with XOAUTH2 (the only importer of aiosmtplib)."""
