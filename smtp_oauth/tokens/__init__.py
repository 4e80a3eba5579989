"""Access tokens from the Microsoft identity platform: the only package that imports msal."""
