"""`make certs`: a development CA and certificates for the arbiter, agents and clients.

Each certificate names one identity in its common name and subject alternative name:
"agent:HOST" for an agent, "ROLE:NAME" for a person. The arbiter's certificate names
127.0.0.1, ::1 and localhost so clients on this machine can verify it. Development
only: the keys are written unencrypted next to the certificates.

``--issue IDENTITY`` adds one certificate signed by the CA already in ``--out``, leaving
the CA and every other file as they are (a new host's agent, a new person); with
``--server-name`` it is a server certificate for those names (an arbiter on another
host).
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


def issue(
    ca: Issued, identity: str, *, server: bool = False, names: Sequence[str] = SERVER_NAMES
) -> Issued:
    """A leaf certificate for ``identity``; ``server`` makes it a TLS server's, for ``names``."""
    key = ec.generate_private_key(ec.SECP256R1())
    names = [*names] if server else [identity]
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


class CertError(Exception):
    """Issuing from an existing CA is not possible as asked; the message says why."""


def load_ca(out: Path) -> Issued:
    """The CA ``write_dev_certs`` wrote under ``out`` (ca.pem and ca-key.pem)."""
    cert_path, key_path = out / "ca.pem", out / "ca-key.pem"
    if not cert_path.exists() or not key_path.exists():
        raise CertError(f"no CA in {out} (ca.pem and ca-key.pem): run `make certs` first")
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CertError(f"{key_path}: not the EC key this script writes")
    if key.public_key().public_numbers() != cert.public_key().public_numbers():  # type: ignore[union-attr]
        raise CertError(f"{key_path} is not the key of {cert_path}")
    return Issued(cert, key)


def issue_more(
    out: Path,
    identities: Sequence[str],
    *,
    server_names: Sequence[str] = (),
    force: bool = False,
) -> dict[str, Pair]:
    """One more certificate per identity from the CA in ``out``; nothing else is touched.

    Refuses (CertError) to overwrite an identity's existing files unless ``force``."""
    ca = load_ca(out)
    pairs: dict[str, Pair] = {}
    for ident in identities:
        if not ident or ident != ident.strip():
            raise CertError(f"{ident!r} is not an identity (ROLE:NAME, agent:HOST or arbiter)")
        stem = stem_of(ident)
        if stem == "ca":
            raise CertError("the CA is not reissued here: remove the directory to start over")
        if not force and ((out / f"{stem}.pem").exists() or (out / f"{stem}-key.pem").exists()):
            raise CertError(f"{out / stem}.pem exists already; pass --force to replace it")
    for ident in identities:
        server = bool(server_names)
        pairs[ident] = write(
            issue(ca, ident, server=server, names=server_names), out, stem_of(ident)
        )
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
    p.add_argument(
        "--issue",
        action="append",
        metavar="IDENTITY",
        help="only issue this identity (agent:HOST, ROLE:NAME) from the CA already in --out, "
        "keeping the CA and the other certificates; repeatable",
    )
    p.add_argument(
        "--server-name",
        action="append",
        default=[],
        metavar="NAME",
        help="with --issue: a server certificate (an arbiter) for this DNS name or IP; repeatable",
    )
    p.add_argument("--force", action="store_true", help="with --issue: replace existing files")
    args = p.parse_args(argv)
    if args.issue:
        try:
            pairs = issue_more(
                args.out, args.issue, server_names=args.server_name, force=args.force
            )
        except CertError as err:
            print(f"make_certs: {err}", file=sys.stderr)
            return 2
        for name, pair in pairs.items():
            print(f"{name:24} {pair.cert}")
        people = [i for i in args.issue if not i.startswith("agent:") and not args.server_name]
        if people:
            print(
                f"add {', '.join(people)} to the arbiter's policy file, then reload it with "
                "SIGHUP (systemctl reload hwbp-arbiter)"
            )
        return 0
    if args.server_name or args.force:
        p.error("--server-name and --force go with --issue")
    pairs = write_dev_certs(args.out, args.hosts, args.clients)
    for name, pair in pairs.items():
        print(f"{name:24} {pair.cert}")
    print(f"{'policy':24} {args.out / 'policy.toml'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
