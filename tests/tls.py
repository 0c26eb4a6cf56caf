"""Certificates for TLS tests, made with the openssl command: a CA and a server certificate for
127.0.0.1 signed by it."""

import subprocess


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=30)


def make_ca(directory, name):
    """A self-signed CA in directory/NAME.key and directory/NAME.crt; returns the .crt path."""
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={name}",
            "-keyout", f"{name}.key", "-out", f"{name}.crt", cwd=directory)
    return directory / f"{name}.crt"


def make_server_cert(directory, ca_name, name="server"):
    """A certificate for 127.0.0.1 signed by the CA ``ca_name``; returns (cert path, key path)."""
    (directory / "san.cnf").write_text("subjectAltName = IP:127.0.0.1\n")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
            "-keyout", f"{name}.key", "-out", f"{name}.csr", cwd=directory)
    openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca_name}.crt", "-CAkey", f"{ca_name}.key",
            "-CAcreateserial", "-days", "2", "-extfile", "san.cnf", "-out", f"{name}.crt", cwd=directory)
    return directory / f"{name}.crt", directory / f"{name}.key"


def tls_listener_config(cert, key):
    """mosquitto settings that make the test broker's one listener speak TLS."""
    return f"certfile {cert}\nkeyfile {key}\nuser root\n"
