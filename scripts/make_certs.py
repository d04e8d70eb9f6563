"""`make certs`: a development CA and certificates for the arbiter, agents and clients.

Each certificate names one identity in its common name and subject alternative name:
"agent:HOST" for an agent, "ROLE:NAME" for a person. The arbiter's certificate names
127.0.0.1, ::1 and localhost so clients on this machine can verify it. Development
only: the keys are written unencrypted next to the certificates.
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import socket
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CLIENTS = ("admin:alice", "debugger:bob", "viewer:carol")
SERVER_NAMES = ("localhost", "127.0.0.1", "::1")
DAYS = 365


@dataclass(frozen=True)
class Issued:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey


@dataclass(frozen=True)
class Pair:
    """Where one identity's certificate and key were written."""

    cert: Path
    key: Path


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def make_ca(name: str = "hwbp development CA") -> Issued:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_now() - datetime.timedelta(minutes=5))
        .not_valid_after(_now() + datetime.timedelta(days=DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return Issued(cert, key)


def _san(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        pass
    if ":" in name:  # an identity such as agent:h1 is a URI with the role as its scheme
        return x509.UniformResourceIdentifier(name)
    return x509.DNSName(name)


def issue(ca: Issued, identity: str, *, server: bool = False) -> Issued:
    """A leaf certificate for ``identity``; ``server`` makes it the arbiter's (TLS server)."""
    key = ec.generate_private_key(ec.SECP256R1())
    names = [*SERVER_NAMES] if server else [identity]
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, identity)]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_now() - datetime.timedelta(minutes=5))
        .not_valid_after(_now() + datetime.timedelta(days=DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName([_san(n) for n in names]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .sign(ca.key, hashes.SHA256())
    )
    return Issued(cert, key)


def write(issued: Issued, out: Path, stem: str) -> Pair:
    out.mkdir(parents=True, exist_ok=True)
    pair = Pair(out / f"{stem}.pem", out / f"{stem}-key.pem")
    pair.cert.write_bytes(issued.cert.public_bytes(serialization.Encoding.PEM))
    pair.key.touch(mode=0o600)
    pair.key.write_bytes(
        issued.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return pair


def stem_of(identity: str) -> str:
    """File name of an identity's certificate: agent:h1 -> agent-h1."""
    return identity.replace(":", "-").replace("/", "_")


def sample_policy(hosts: Sequence[str], clients: Sequence[str]) -> str:
    lines = [
        "# hwbp-arbiter policy: who may do what, by the identity in their certificate.",
        "# Roles: admin, debugger (needs hosts), viewer. Agents are not listed here: a",
        '# certificate named "agent:HOST" is the agent of HOST, if [agents] admits HOST.',
        "",
        "[agents]",
        'hosts = ["*"]',
        "",
        "[identities]",
    ]
    for ident in clients:
        role = ident.split(":", 1)[0]
        if role == "debugger":
            listed = ", ".join(f'"{h}"' for h in hosts)
            lines.append(f'"{ident}" = {{ role = "debugger", hosts = [{listed}] }}')
        elif role in ("admin", "viewer"):
            lines.append(f'"{ident}" = {{ role = "{role}" }}')
    return "\n".join(lines) + "\n"


def write_dev_certs(
    out: Path, hosts: Sequence[str], clients: Sequence[str] = DEFAULT_CLIENTS
) -> dict[str, Pair]:
    """CA, arbiter, one agent per host and the clients under ``out``, plus policy.toml.

    Returns the pairs by name: "ca", "arbiter", "agent:HOST" and each client identity.
    """
    ca = make_ca()
    pairs = {
        "ca": write(ca, out, "ca"),
        "arbiter": write(issue(ca, "arbiter", server=True), out, "arbiter"),
    }
    for ident in [*(f"agent:{h}" for h in hosts), *clients]:
        pairs[ident] = write(issue(ca, ident), out, stem_of(ident))
    (out / "policy.toml").write_text(sample_policy(hosts, clients))
    return pairs


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=ROOT / "var" / "certs")
    p.add_argument(
        "--hosts",
        nargs="+",
        default=[socket.gethostname(), "h1", "h2"],
        help="hosts to issue agent certificates for (default: this host, h1, h2)",
    )
    p.add_argument("--clients", nargs="+", default=list(DEFAULT_CLIENTS), metavar="ROLE:NAME")
    args = p.parse_args(argv)
    pairs = write_dev_certs(args.out, args.hosts, args.clients)
    for name, pair in pairs.items():
        print(f"{name:24} {pair.cert}")
    print(f"{'policy':24} {args.out / 'policy.toml'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
