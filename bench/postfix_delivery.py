"""A throw-away Postfix 3.7 that delivers to the sandbox's fake Exchange, for bench_relay_delivery.py.

Postfix relays everything to ``relayhost = [localhost]:PORT`` (the fake Exchange) with STARTTLS
at ``smtp_tls_security_level = secure`` (the sandbox CA in ``smtp_tls_CAfile``, the certificate's
``localhost`` name checked) and SASL XOAUTH2 through the sasl-xoauth2 Cyrus plug-in
(bench/build_sasl_xoauth2.sh builds it), at most as many sessions as the relay may open
(Exchange Online allows 3 per mailbox:
https://learn.microsoft.com/en-us/office365/servicedescriptions/exchange-online-service-description/exchange-online-limits).
The plug-in's token file carries an access token that the project's token provider got from the
sandbox's Entra ID (client credentials) and the sandbox's token endpoint and CA; a run is far
shorter than the token's lifetime, so the plug-in never refreshes it.

A round fills Postfix's queue through its smtpd with every message put on hold, releases them all
at once (``postsuper -H ALL``, ``postqueue -f``), and times the delivery as the relay's is timed:
from the first to the last message the fake Exchange received, with the CPU of every process of
the instance (the master, and qmgr, smtp, tlsmgr, ... alive or already reaped) over that span.
Needs root and Debian's postfix package.
"""

# A script run by hand as root: it polls and touches small files around what it measures, and its
# Postfix configuration directory is a fixed path, as the one bench_relay_postfix.sh uses.
# ruff: noqa: ASYNC110, ASYNC240, S108
from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import smtplib
import socket
from pathlib import Path

from bench.harness import bench_message
from bench.sandbox_process import Round, SandboxProcess, time_delivery
from smtp_oauth.settings.loading import load_settings
from smtp_oauth.tokens.provider import create_token_provider

CONF = Path("/tmp/smtp-oauth-bench-postfix-delivery")
QUEUE = Path("/var/spool/postfix-bench-delivery")  # on the same disk as the relay's spool
DATA = Path("/var/lib/postfix-bench-delivery")
LOG = Path("/var/log/postfix-bench-delivery.log")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


async def run(*command: str, check: bool = True) -> str:
    """Run a Postfix command without blocking the bench's event loop; its stdout."""
    process = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await process.communicate()
    if check and process.returncode:
        raise RuntimeError(f"{' '.join(command)} failed: {err.decode(errors='replace').strip()}")
    return out.decode()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def token_expiry(token: str) -> int:
    """The ``exp`` claim of a JWT access token (the sandbox issues JWTs, as Entra ID does)."""
    payload = token.split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return int(claims["exp"])


def tree_cpu_seconds(master: int) -> float:
    """User + system CPU of ``master`` and its children, with the children it already reaped."""

    def times(pid: int) -> float:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:  # exited meanwhile: counted in the master's cutime once reaped
            return 0.0
        return sum(int(value) for value in fields[11:15]) / CLOCK_TICKS  # utime stime cutime cstime

    children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    return times(master) + sum(times(int(child)) for child in children)


def queued(name: str) -> int:
    """Messages in one of the instance's queues (hold, active, deferred, ...)."""
    return sum(len(files) for _, _, files in os.walk(QUEUE / name))


class PostfixDelivery:
    """The Postfix instance: ``start``, then rounds of ``deliver``, then ``stop``."""

    def __init__(self, sandbox: SandboxProcess, *, connections: int) -> None:
        self.sandbox, self.connections = sandbox, connections
        self.fill_port = free_port()
        self.master = 0
        self.reuse = False

    async def start(self) -> None:
        if (
            shutil.which("postfix") is None
            or not Path("/usr/lib/x86_64-linux-gnu/sasl2/libsasl-xoauth2.so").exists()
        ):
            raise RuntimeError("needs Debian's postfix and sasl-xoauth2 (bench/build_sasl_xoauth2.sh)")
        await self.stop()
        LOG.unlink(missing_ok=True)  # sessions() counts this run's only
        for directory in (CONF, QUEUE, DATA):
            shutil.rmtree(directory, ignore_errors=True)
            directory.mkdir(parents=True)
        shutil.chown(DATA, "postfix")
        # The smtp processes run as postfix: they get copies they can read, not the sandbox's 0700 dir.
        ca_file = DATA / "sandbox-ca.pem"
        shutil.copyfile(self.sandbox.ca_file, ca_file)
        shutil.chown(ca_file, "postfix")
        token_file = DATA / "xoauth2-token.json"
        await self.write_token(token_file)
        mailbox = self.sandbox.mailbox
        # Debian's services, with smtpd on a free port (for filling) instead of port 25.
        services = Path("/etc/postfix/master.cf").read_text().splitlines()
        (CONF / "master.cf").write_text(
            "".join(
                f"127.0.0.1:{self.fill_port} inet n - n - - smtpd\n"
                if line.startswith("smtp ") and " inet " in line
                else line + "\n"
                for line in services
            )
        )
        (CONF / "main.cf").write_text(
            f"""compatibility_level = 3.6
queue_directory = {QUEUE}
data_directory = {DATA}
myhostname = bench.localdomain
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
alias_maps =
alias_database =
maillog_file = {LOG}
message_size_limit = 36700160
smtpd_recipient_restrictions = permit_mynetworks, reject
smtpd_data_restrictions = check_client_access static:HOLD
relayhost = [localhost]:{self.sandbox.smtp_port}
smtp_host_lookup = native
smtp_destination_concurrency_limit = {self.connections}
smtp_tls_security_level = secure
smtp_tls_secure_cert_match = nexthop
smtp_tls_CAfile = {ca_file}
smtp_tls_loglevel = 1
smtp_tls_session_cache_database = btree:${{data_directory}}/smtp_scache
smtp_sasl_auth_enable = yes
smtp_sasl_password_maps = static:{mailbox}:{token_file}
smtp_sasl_mechanism_filter = xoauth2
smtp_sasl_security_options =
smtp_sasl_tls_security_options =
"""
        )
        # No chroot: the plug-in, its token file and the CA stay where they are.
        # Debian's master.cf has tlsproxy commented out; smtp_tls_connection_reuse needs it.
        await run("postconf", "-c", str(CONF), "-M", "tlsproxy/unix=tlsproxy unix - - n - 0 tlsproxy")
        await run("postconf", "-c", str(CONF), "-F", "*/*/chroot = n")
        # Postfix only runs a second configuration directory that the default one names.
        named = (await run("postconf", "-h", "alternate_config_directories")).replace(",", " ").split()
        if str(CONF) not in named:
            await run("postconf", "-e", f"alternate_config_directories = {' '.join([*named, str(CONF)])}")
        await run("postfix", "-c", str(CONF), "check")
        await run("postfix", "-c", str(CONF), "start")
        self.master = int((QUEUE / "pid" / "master.pid").read_text().split()[0])

    async def write_token(self, token_file: Path) -> None:
        provider = create_token_provider(load_settings(self.sandbox.config_path))
        token = await provider.access_token()
        info = self.sandbox.info
        token_file.write_text(
            json.dumps(
                {
                    "access_token": token,
                    "expiry": str(token_expiry(token)),
                    # Required by the plug-in; an app's client-credentials token has no refresh
                    # token, and the access token outlives the run.
                    "refresh_token": "",
                    "client_id": info["client_id"],
                    "client_secret": info["client_secret"],
                    "token_endpoint": info["token_endpoint"],
                    "ca_bundle_file": str(token_file.parent / "sandbox-ca.pem"),
                }
            )
        )
        token_file.chmod(0o600)
        shutil.chown(token_file, "postfix")

    async def stop(self) -> None:
        if (CONF / "main.cf").exists():
            await run("postfix", "-c", str(CONF), "stop", check=False)  # fails if not running
            while (QUEUE / "pid" / "master.pid").exists() and Path(f"/proc/{self.master}").exists():
                await asyncio.sleep(0.1)

    async def deliver(self, *, count: int, size: int, reuse: bool) -> Round:
        """One round (the CPU: every process of the instance).

        ``reuse``: ``smtp_tls_connection_reuse = yes`` (TLS sessions kept open through tlsproxy,
        Postfix 3.4+); by default Postfix opens a new TLS session, and logs in, for every message.
        """
        if reuse != self.reuse:
            value = "yes" if reuse else "no"
            await run("postconf", "-c", str(CONF), "-e", f"smtp_tls_connection_reuse = {value}")
            await run("postfix", "-c", str(CONF), "reload")
            self.reuse = reuse
        mailbox = self.sandbox.mailbox
        await asyncio.to_thread(self._fill, mailbox, count, size)
        while queued("hold") < count:  # cleanup writes the queue file after smtpd's 250
            await asyncio.sleep(0.05)
        await self.sandbox.clear()
        await run("postsuper", "-c", str(CONF), "-H", "ALL")
        await run("postqueue", "-c", str(CONF), "-f")
        return await time_delivery(
            self.sandbox,
            count,
            sender_cpu=lambda: tree_cpu_seconds(self.master),
            failed=lambda: None if Path(f"/proc/{self.master}").exists() else f"Postfix stopped; see {LOG}",
            auth_user=mailbox,
        )

    def sessions(self) -> tuple[int, int]:
        """(TLS sessions Postfix logged as Verified, all its TLS sessions) so far."""
        lines = [line for line in LOG.read_text().splitlines() if "TLS connection established to" in line]
        return sum("Verified TLS" in line for line in lines), len(lines)

    def _fill(self, mailbox: str, count: int, size: int) -> None:
        with smtplib.SMTP("127.0.0.1", self.fill_port, timeout=60) as smtp:
            for n in range(count):
                data = bench_message(mailbox, n, size, tag="postfix").as_bytes()
                smtp.sendmail(mailbox, ["someone@example.net"], data)
