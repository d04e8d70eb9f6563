"""TLS with client certificates, shared by the arbiter, its agents and its clients.

Every side presents a certificate and trusts one CA bundle: the arbiter accepts only
peers whose certificate that CA signed (mutual TLS), and the certificate's name is the
peer's identity for the arbiter's policy. One loader here keeps the three in step.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc

ENV_CERT, ENV_KEY, ENV_CA = "HWBP_TLS_CERT", "HWBP_TLS_KEY", "HWBP_TLS_CA"
Options = Sequence[tuple[str, str | int]]  # gRPC channel arguments


class TlsConfigError(ValueError):
    """Incomplete or unreadable TLS settings: a configuration mistake, caught before dialling."""


@dataclass(frozen=True)
class TlsConfig:
    """Where this side's certificate, its key and the trusted CA bundle live (PEM files)."""

    cert: Path  # certificate (chain) presented to the peer
    key: Path  # private key of ``cert``
    ca: Path  # CA bundle the peer's certificate must chain to
    server_name: str | None = None  # client only: name to check in the arbiter's certificate

    def read(self) -> tuple[bytes, bytes, bytes]:
        """(cert, key, ca) bytes; a missing or unreadable file is a TlsConfigError naming it."""
        out = []
        for what, path in (("certificate", self.cert), ("key", self.key), ("CA", self.ca)):
            try:
                out.append(Path(path).read_bytes())
            except OSError as err:
                raise TlsConfigError(f"cannot read TLS {what} {path}: {err.strerror}") from None
        return out[0], out[1], out[2]

    @classmethod
    def resolve(
        cls,
        cert: str | None = None,
        key: str | None = None,
        ca: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> TlsConfig | None:
        """Explicit values, each falling back to $HWBP_TLS_*; None when none is set at all.

        Pass ``env={}`` to ignore the environment (the arbiter takes flags only).
        """
        env = os.environ if env is None else env
        values = (cert or env.get(ENV_CERT), key or env.get(ENV_KEY), ca or env.get(ENV_CA))
        if not any(values):
            return None
        names = ("--tls-cert/$" + ENV_CERT, "--tls-key/$" + ENV_KEY, "--tls-ca/$" + ENV_CA)
        missing = [n for n, v in zip(names, values, strict=True) if not v]
        if missing:
            raise TlsConfigError(f"TLS needs a certificate, its key and a CA: {', '.join(missing)}")
        return cls(Path(values[0] or ""), Path(values[1] or ""), Path(values[2] or ""))


def server_credentials(cfg: TlsConfig) -> grpc.ServerCredentials:
    """Mutual TLS: a peer without a certificate signed by ``cfg.ca`` fails the handshake."""
    cert, key, ca = cfg.read()
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=ca, require_client_auth=True
    )


def channel_credentials(cfg: TlsConfig) -> grpc.ChannelCredentials:
    cert, key, ca = cfg.read()
    return grpc.ssl_channel_credentials(
        root_certificates=ca, private_key=key, certificate_chain=cert
    )


def _options(cfg: TlsConfig | None, options: Options) -> list[tuple[str, str | int]]:
    out = list(options)
    if cfg is not None and cfg.server_name:
        out.append(("grpc.ssl_target_name_override", cfg.server_name))
    return out


def channel(endpoint: str, cfg: TlsConfig | None, options: Options = ()) -> grpc.Channel:
    """A blocking channel: TLS when ``cfg`` is given, plaintext otherwise."""
    if cfg is None:
        return grpc.insecure_channel(endpoint, options=_options(cfg, options))
    return grpc.secure_channel(endpoint, channel_credentials(cfg), options=_options(cfg, options))


def aio_channel(endpoint: str, cfg: TlsConfig | None, options: Options = ()) -> grpc.aio.Channel:
    """The asyncio twin of ``channel``."""
    if cfg is None:
        return grpc.aio.insecure_channel(endpoint, options=_options(cfg, options))
    creds = channel_credentials(cfg)
    return grpc.aio.secure_channel(endpoint, creds, options=_options(cfg, options))
