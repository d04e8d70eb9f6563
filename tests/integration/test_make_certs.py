"""scripts/make_certs.py --issue: one more certificate from the existing CA, nothing else
touched, and it works: a new host's agent connects to an arbiter using the old CA."""

from __future__ import annotations

import subprocess
from pathlib import Path

from cryptography import x509

from scripts.make_certs import write_dev_certs
from tests.integration import procs


def make_certs(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [procs.PY, "scripts/make_certs.py", *args],
        cwd=procs.ROOT,
        env=procs._env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def snapshot(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


def test_one_more_agent_certificate_from_the_existing_ca(tmp_path: Path) -> None:
    out = tmp_path / "certs"
    certs = write_dev_certs(out, ["h1"], ["admin:alice"])
    before = snapshot(out)

    done = make_certs("--out", str(out), "--issue", "agent:web7")
    assert done.returncode == 0, done.stderr
    after = snapshot(out)
    assert {k: after[k] for k in before} == before  # the CA and every other file unchanged
    assert set(after) - set(before) == {"agent-web7.pem", "agent-web7-key.pem"}
    ca = x509.load_pem_x509_certificate(after["ca.pem"])
    cert = x509.load_pem_x509_certificate(after["agent-web7.pem"])
    cert.verify_directly_issued_by(ca)
    assert cert.subject.rfc4514_string() == "CN=agent:web7"

    # It is accepted where it matters: a real agent of web7 connects with it.
    arbiter, address = procs.start_arbiter(
        *("--tls-cert", str(certs["arbiter"].cert), "--tls-key", str(certs["arbiter"].key)),
        *("--tls-ca", str(certs["ca"].cert)),
    )
    try:
        tls = ["--tls-cert", str(out / "agent-web7.pem"), "--tls-key"]
        tls += [str(out / "agent-web7-key.pem"), "--tls-ca", str(out / "ca.pem")]
        agent = procs.start_agent(address, "web7", 0, "--cpus", "1", *tls)
        agent.stop()
    finally:
        arbiter.stop()


def test_a_server_certificate_names_the_arbiters_host(tmp_path: Path) -> None:
    out = tmp_path / "certs"
    write_dev_certs(out, ["h1"], [])
    done = make_certs(
        *("--out", str(out), "--issue", "arbiter-east", "--server-name", "arb.example.net"),
        *("--server-name", "10.1.2.3"),
    )
    assert done.returncode == 0, done.stderr
    cert = x509.load_pem_x509_certificate((out / "arbiter-east.pem").read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["arb.example.net"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["10.1.2.3"]


def test_it_refuses_to_replace_or_to_work_without_a_ca(tmp_path: Path) -> None:
    out = tmp_path / "certs"
    done = make_certs("--out", str(out), "--issue", "agent:web7")
    assert done.returncode == 2 and "no CA in" in done.stderr and "Traceback" not in done.stderr
    write_dev_certs(out, ["h1"], [])
    before = snapshot(out)
    done = make_certs("--out", str(out), "--issue", "agent:h1")
    assert done.returncode == 2 and "exists already; pass --force" in done.stderr
    assert snapshot(out) == before
    done = make_certs("--out", str(out), "--issue", "agent:h1", "--force")
    assert done.returncode == 0 and snapshot(out)["agent-h1.pem"] != before["agent-h1.pem"]
    assert snapshot(out)["ca.pem"] == before["ca.pem"]
