"""NATS connection options, as every Sluice binary takes them (decision 13) minus the `nats_`
prefix: `url`, `user`, `password_file`, `token_file`, `nkey`, `creds`, `tls_ca`, `tls_cert`,
`tls_key`, `inbox_prefix`; each falls back to its `SLUICE_NATS_*` environment variable.
Passwords and tokens come from files or the environment, never from a command line."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import ssl
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import nats
from nats.aio.client import Client as NatsClient

from .errors import ConfigError, SluiceError

DEFAULT_URL = "nats://127.0.0.1:4222"
#: How long connecting may take before it fails (seconds).
CONNECT_TIMEOUT_S = 5.0
#: Tries of each server before connecting fails (a refused TLS handshake or credentials).
CONNECT_ATTEMPTS = 3
#: The most connecting may take in all, every try included (seconds).
CONNECT_WAIT_S = 30.0


@dataclasses.dataclass
class ConnectionOptions:
    url: str = DEFAULT_URL
    user: str | None = None
    password_file: str | None = None
    #: The password itself, from SLUICE_NATS_PASSWORD (never a parameter).
    password_env: str | None = dataclasses.field(default=None, repr=False)
    token_file: str | None = None
    token_env: str | None = dataclasses.field(default=None, repr=False)
    nkey: str | None = None
    creds: str | None = None
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    inbox_prefix: str | None = None

    @classmethod
    def resolve(cls, environ: Mapping[str, str] | None = None, **given: str | None) -> ConnectionOptions:
        """The options given, each missing one from its SLUICE_NATS_* variable."""
        env = os.environ if environ is None else environ

        def pick(name: str, var: str) -> str | None:
            value = given.get(name)
            if value:
                return value
            return env.get(var) or None

        return cls(
            url=pick("url", "SLUICE_NATS_URL") or DEFAULT_URL,
            user=pick("user", "SLUICE_NATS_USER"),
            password_file=given.get("password_file") or None,
            password_env=env.get("SLUICE_NATS_PASSWORD") or None,
            token_file=given.get("token_file") or None,
            token_env=env.get("SLUICE_NATS_TOKEN") or None,
            nkey=pick("nkey", "SLUICE_NATS_NKEY"),
            creds=pick("creds", "SLUICE_NATS_CREDS"),
            tls_ca=pick("tls_ca", "SLUICE_NATS_TLS_CA"),
            tls_cert=pick("tls_cert", "SLUICE_NATS_TLS_CERT"),
            tls_key=pick("tls_key", "SLUICE_NATS_TLS_KEY"),
            inbox_prefix=pick("inbox_prefix", "SLUICE_NATS_INBOX_PREFIX"),
        )

    def check(self) -> None:
        """Refuses combinations that cannot work, naming the options (no I/O)."""
        if not self.url.strip():
            raise ConfigError("url: no NATS URL given")
        password = self.password_file or self.password_env
        token = self.token_file or self.token_env
        methods = [
            (bool(self.user or password), "user/password_file"),
            (bool(token), "token_file"),
            (bool(self.nkey), "nkey"),
            (bool(self.creds), "creds"),
        ]
        given = [name for present, name in methods if present]
        if len(given) > 1:
            raise ConfigError(f"give one way to authenticate, not several: {', '.join(given)}")
        if self.user and not password:
            raise ConfigError("user needs a password: password_file FILE or SLUICE_NATS_PASSWORD")
        if password and not self.user:
            raise ConfigError("a password needs a user: user")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ConfigError("tls_cert and tls_key go together")

    def _read(self, option: str, path: str) -> str:
        try:
            return Path(path).read_text().strip()
        except OSError as error:
            raise ConfigError(f"{option} {path}: {error.strerror or error}") from None

    def connect_arguments(self, name: str) -> dict[str, Any]:
        """What nats-py's `connect` takes for these options."""
        self.check()
        arguments: dict[str, Any] = {
            "servers": [server.strip() for server in self.url.split(",") if server.strip()],
            "name": name,
            "connect_timeout": CONNECT_TIMEOUT_S,
            "allow_reconnect": True,
            # Bounded while connecting, unbounded once connected (`connect` sets it): a
            # server that refuses us (credentials, a TLS certificate) is an error, not a hang.
            "max_reconnect_attempts": CONNECT_ATTEMPTS,
        }
        if self.user:
            arguments["user"] = self.user
            arguments["password"] = (
                self._read("password_file", self.password_file) if self.password_file else self.password_env
            )
        if self.token_file or self.token_env:
            arguments["token"] = (
                self._read("token_file", self.token_file) if self.token_file else self.token_env
            )
        if self.nkey:
            self._read("nkey", self.nkey)
            arguments["nkeys_seed"] = self.nkey
        if self.creds:
            self._read("creds", self.creds)
            arguments["user_credentials"] = self.creds
        if self.tls_ca or self.tls_cert or self.url.startswith("tls://"):
            context = (
                ssl.create_default_context(cafile=self.tls_ca)
                if self.tls_ca
                else ssl.create_default_context()
            )
            if self.tls_cert and self.tls_key:
                try:
                    context.load_cert_chain(self.tls_cert, self.tls_key)
                except (OSError, ssl.SSLError) as error:
                    raise ConfigError(f"tls_cert {self.tls_cert} / tls_key {self.tls_key}: {error}") from None
            arguments["tls"] = context
        if self.inbox_prefix:
            arguments["inbox_prefix"] = self.inbox_prefix
        return arguments

    async def connect(self, name: str) -> NatsClient:
        arguments = self.connect_arguments(name)
        try:
            # Bounded here too: nats-py can wait for ever on a socket it closes after a failed
            # TLS handshake.
            client: NatsClient = await asyncio.wait_for(nats.connect(**arguments), CONNECT_WAIT_S)
        except Exception as error:
            why = (
                f"no connection within {CONNECT_WAIT_S:g} s (is the server up, and does it accept "
                "these credentials and TLS settings?)"
                if isinstance(error, TimeoutError)
                else str(error) or type(error).__name__
            )
            failure = SluiceError(f"cannot connect to NATS at {self.url}: {why}")
            failure.retryable = True
            raise failure from None
        # Once connected, a lost connection is retried for as long as it takes (nats-py reads
        # the option at each reconnect).
        client.options["max_reconnect_attempts"] = -1
        return client

    @property
    def identity(self) -> str:
        """Who requests are sent as: the NATS user, or `anonymous`."""
        user = self.user or ""
        if user and all(c.isascii() and (c.isalnum() or c in "-_") for c in user):
            return user
        return "anonymous"
