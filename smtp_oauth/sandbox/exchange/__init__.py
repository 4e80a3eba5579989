"""The sandbox's fake Exchange Online: an SMTP server that takes XOAUTH2 only."""
