"""`smtp-oauth login --flow interactive`: auth code + PKCE through a browser and the loopback redirect.

The "browser" is a small script named in $BROWSER (as a user would set it): it returns at once, as
a real browser does, then in the background follows the sandbox's /authorize answer and POSTs the
form_post fields to the command's loopback listener.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from smtp_oauth.sandbox import Sandbox
from tests.cli.admin_cli import clean_env, run_cli_async

FAKE_BROWSER = """\
#!{python}
import html.parser, os, ssl, sys, urllib.parse, urllib.request

if os.fork():
    sys.exit(0)  # the browser "opened": return to the caller while the page loads


class Form(html.parser.HTMLParser):
    action, fields = "", {{}}

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "form":
            self.action = attrs.get("action", "")
        elif tag == "input" and attrs.get("name"):
            self.fields[attrs["name"]] = attrs.get("value") or ""


context = ssl.create_default_context(cafile={ca_file!r})
with urllib.request.urlopen(sys.argv[1], context=context, timeout=10) as page:
    form = Form()
    form.feed(page.read().decode())
body = urllib.parse.urlencode(form.fields).encode()
urllib.request.urlopen(urllib.request.Request(form.action, data=body), timeout=10).read()
"""


async def test_interactive_login_through_the_browser(smtp_oauth_sandbox: Sandbox, tmp_path: Path) -> None:
    """The browser named in $BROWSER signs in; login reports the user and the token is then usable."""
    browser = tmp_path / "fake-browser"
    browser.write_text(FAKE_BROWSER.format(python=sys.executable, ca_file=str(smtp_oauth_sandbox.ca_file)))
    browser.chmod(0o700)
    config = smtp_oauth_sandbox.write_config(tmp_path / "user.toml", flow="interactive")
    env = clean_env(
        tmp_path, BROWSER=f"{browser} %s", NO_PROXY="localhost,127.0.0.1", no_proxy="localhost,127.0.0.1"
    )

    login = await run_cli_async(
        "login", "--flow", "interactive", "--config", str(config), env=env, cwd=tmp_path
    )
    assert login.returncode == 0, login.stderr
    assert f"Signed in as {smtp_oauth_sandbox.tenant.mailbox}" in login.stdout
    assert "with interactive" in login.stdout

    claims = await run_cli_async("token", "--claims", "--config", str(config), env=env, cwd=tmp_path)
    assert claims.returncode == 0, claims.stderr
    assert json.loads(claims.stdout)["scp"] == "SMTP.Send"
