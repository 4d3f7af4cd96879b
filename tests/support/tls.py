"""Certificates for TLS tests, generated with the openssl command line (no Python crypto package).

`make_pki(folder)` builds a throw-away CA, a server certificate for 127.0.0.1/localhost (with a
subjectAltName, which is what hostname verification reads), a server certificate for another
name (to provoke a hostname mismatch), a client certificate signed by the CA, and a second,
unrelated CA (the "wrong CA"). Keys are EC P-256: fast to generate on a loaded machine.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Pki:
    ca: Path                # CA certificate that signed everything below
    server_cert: Path       # CN localhost, SAN IP:127.0.0.1, DNS:localhost
    server_key: Path
    other_cert: Path        # SAN DNS:other.invalid only: a hostname mismatch for 127.0.0.1
    other_key: Path
    client_cert: Path       # client certificate (CN voice-client) for require_certificate
    client_key: Path
    wrong_ca: Path          # an unrelated CA: verification against it must fail


def _openssl(*args: str, cwd: Path) -> None:
    out = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args)} failed:\n{out.stderr}")


def _key(folder: Path, name: str) -> Path:
    path = folder / f"{name}.key"
    _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", str(path), cwd=folder)
    path.chmod(0o600)
    return path


def _ca(folder: Path, name: str) -> tuple[Path, Path]:
    key = _key(folder, name)
    cert = folder / f"{name}.crt"
    _openssl("req", "-x509", "-new", "-key", str(key), "-sha256", "-days", "2", "-subj", f"/CN={name}",
             "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
             "-out", str(cert), cwd=folder)
    return cert, key


def _leaf(folder: Path, name: str, cn: str, ca: tuple[Path, Path], extensions: str) -> tuple[Path, Path]:
    key = _key(folder, name)
    csr = folder / f"{name}.csr"
    cert = folder / f"{name}.crt"
    ext = folder / f"{name}.ext"
    ext.write_text(extensions)
    _openssl("req", "-new", "-key", str(key), "-subj", f"/CN={cn}", "-out", str(csr), cwd=folder)
    _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca[0]), "-CAkey", str(ca[1]), "-CAcreateserial",
             "-days", "2", "-sha256", "-extfile", str(ext), "-out", str(cert), cwd=folder)
    return cert, key


def make_pki(folder: Path) -> Pki:
    folder.mkdir(parents=True, exist_ok=True)
    ca = _ca(folder, "test-ca")
    server_ext = ("basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n"
                  "subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    server = _leaf(folder, "server", "localhost", ca, server_ext)
    other = _leaf(folder, "other", "other.invalid", ca, server_ext.replace(
        "IP:127.0.0.1,DNS:localhost", "DNS:other.invalid"))
    client = _leaf(folder, "client", "voice-client", ca,
                   "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=clientAuth\n")
    wrong_ca, _ = _ca(folder, "wrong-ca")
    return Pki(ca=ca[0], server_cert=server[0], server_key=server[1], other_cert=other[0], other_key=other[1],
               client_cert=client[0], client_key=client[1], wrong_ca=wrong_ca)
