"""Fixtures for the core gateway tests: a PKI with every kind of client certificate the gateway
must admit or refuse, what `openssl x509` says about a certificate, raw HTTP/1.1 over TLS with
Python's ssl module (where curl would normalise what is sent), and small misbehaving upstreams."""

import base64
import hashlib
import os
import shutil
import socket
import ssl
import subprocess
import tempfile
import threading
import time

from crl_fixtures import CertificateAuthority, run

# Extra `openssl ca` extension sections appended to each CA's own configuration.
EXTRA_SECTIONS = """
[ client_san ]
basicConstraints = CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = clientAuth
subjectAltName = DNS:client.example.org,URI:spiffe://example.org/client/good,email:client@example.org,IP:10.1.2.3
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[ server_rsa ]
basicConstraints = CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost,IP:127.0.0.1
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
"""


def concat(path, *parts):
    with open(path, "w") as out:
        for part in parts:
            with open(part) as f:
                out.write(f.read())
    return path


class CorePki:
    """root → inter (in the truststore) → clients; root → inter_b (not in the truststore, sent by
    its clients); deep_root → five intermediates → a leaf; and an unrelated foreign root."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="portcullis-core-pki-")
        self.root = self._ca("root", "Core Test Root CA")
        self.inter = self._ca("inter", "Core Test Issuing CA", self.root)
        self.inter_b = self._ca("inter-b", "Core Test Client-Sent CA", self.root)
        self.foreign_root = self._ca("foreign", "Foreign Root CA")
        self.deep_root = self._ca("deep-root", "Deep Root CA")
        deep = [self.deep_root]
        for i in range(1, 6):
            deep.append(self._ca(f"deep-{i}", f"Deep Intermediate {i}", deep[-1]))

        self.truststore = concat(os.path.join(self.dir, "truststore.pem"),
                                 self.root.cert, self.inter.cert, self.deep_root.cert)
        self.server = self.inter.issue("server", "localhost", extensions="server")
        self.server_rsa = self._issue_rsa(self.inter, "server-rsa", "localhost", "server_rsa")

        # A serial with a leading zero nibble: the header must keep it, as openssl prints it.
        with open(os.path.join(self.inter.dir, "serial"), "w") as f:
            f.write("0A1B2C3D4E5F60718293A4B5C6D7E8F9\n")
        # An O with a comma: RFC 4514 escaping must match openssl's. (issue() writes "/CN=" + name.)
        self.good = self.inter.issue("good", "client-good/O=Example\\, Inc.", extensions="client_san")
        self.good["leaf_only"] = self.good["cert"]
        self.via_sent = self.inter_b.issue("via-sent", "client-via-sent-intermediate")
        self.expired = self.inter.issue("expired", "client-expired", startdate="20200101000000Z",
                                        enddate="20200201000000Z")
        self.server_auth_only = self.inter.issue("server-auth-only", "client-server-auth-only",
                                                 extensions="server")
        self.foreign = self.foreign_root.issue("foreign-client", "client-foreign")
        deep_leaf = deep[-1].issue("deep", "client-too-deep")
        deep_leaf["chain"] = concat(os.path.join(self.dir, "deep-chain.pem"), deep_leaf["cert"],
                                    *[ca.cert for ca in reversed(deep[1:])])
        self.deep = deep_leaf

    def _ca(self, name, common_name, parent=None):
        ca = CertificateAuthority(self.dir, name, common_name, parent, crl_days=30)
        with open(ca.config, "a") as f:
            f.write(EXTRA_SECTIONS)
        return ca

    def _issue_rsa(self, ca, name, common_name, extensions):
        key = os.path.join(ca.dir, f"{name}.key")
        csr = os.path.join(ca.dir, f"{name}.csr")
        cert = os.path.join(ca.dir, f"{name}.pem")
        run("openssl", "req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", csr,
            "-subj", f"/CN={common_name}")
        run("openssl", "ca", "-batch", "-config", ca.config, "-extensions", extensions, "-in", csr,
            "-out", cert, "-notext")
        chain = concat(os.path.join(ca.dir, f"{name}-chain.pem"), cert, ca.cert)
        return {"cert": cert, "key": key, "chain": chain}

    def cleanup(self):
        shutil.rmtree(self.dir, ignore_errors=True)


# --- what openssl says about a certificate ---------------------------------------------------

def x509(cert, *args):
    return run("openssl", "x509", "-in", cert, "-noout", *args).stdout.strip()


def after_equals(text):
    return text.split("=", 1)[1]


def openssl_date_to_rfc3339(text):
    # "Jan  1 00:00:00 2026 GMT"
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.strptime(text, "%b %d %H:%M:%S %Y GMT"))


def expected_identity(cert):
    """The default identity headers, as `openssl x509` prints each value for `cert`."""
    dates = dict(line.split("=", 1) for line in x509(cert, "-dates").splitlines())
    san_lines = x509(cert, "-ext", "subjectAltName").splitlines()
    san = san_lines[1].strip().replace("IP Address:", "IP:") if len(san_lines) > 1 else None
    return {
        "X-Client-Cert-Subject": after_equals(x509(cert, "-subject", "-nameopt", "RFC2253")),
        "X-Client-Cert-Issuer": after_equals(x509(cert, "-issuer", "-nameopt", "RFC2253")),
        "X-Client-Cert-Serial": after_equals(x509(cert, "-serial")),
        "X-Client-Cert-Fingerprint-SHA256":
            after_equals(x509(cert, "-fingerprint", "-sha256")).replace(":", "").lower(),
        "X-Client-Cert-Not-Before": openssl_date_to_rfc3339(dates["notBefore"]),
        "X-Client-Cert-Not-After": openssl_date_to_rfc3339(dates["notAfter"]),
        "X-Client-Cert-SAN": san,
    }


def der_of(cert):
    return subprocess.run(["openssl", "x509", "-in", cert, "-outform", "DER"], check=True,
                          capture_output=True).stdout


def pem_of(der):
    b64 = base64.b64encode(der).decode()
    return "-----BEGIN CERTIFICATE-----\n" + "".join(
        b64[i:i + 64] + "\n" for i in range(0, len(b64), 64)) + "-----END CERTIFICATE-----\n"


# --- the echo upstream's view of a request -----------------------------------------------------

def header_values(echo, name):
    """Every value the upstream received for `name` (exact spelling compared case-insensitively)."""
    return [v for n, v in echo["headers"] if n.lower() == name.lower()]


def one_header(test, echo, name):
    values = header_values(echo, name)
    test.assertEqual(len(values), 1, f"{name}: {values}")
    return values[0]


# --- raw HTTP/1.1 over TLS -------------------------------------------------------------------

def client_context(pki, client=None, chain=True, minimum=None, maximum=None):
    context = ssl.create_default_context(cafile=pki.root.cert)
    if client:
        context.load_cert_chain(client["chain"] if chain else client["cert"], client["key"])
    if minimum:
        context.minimum_version = minimum
    if maximum:
        context.maximum_version = maximum
    return context


class TlsConnection:
    """One TLS connection to the gateway; requests are written byte for byte as given."""

    def __init__(self, port, context, timeout=30, server_hostname="localhost"):
        """`server_hostname` is sent as SNI; None sends none (the context must then not check
        the host name)."""
        raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock = context.wrap_socket(raw, server_hostname=server_hostname)
        self.buffer = b""

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *args):
        self.close()

    def send(self, data):
        self.sock.sendall(data)

    def _fill(self):
        chunk = self.sock.recv(1 << 20)
        if not chunk:
            raise ConnectionError("connection closed mid-response")
        self.buffer += chunk

    def read_head(self):
        while b"\r\n\r\n" not in self.buffer:
            self._fill()
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        headers = []
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers.append((name.strip().lower(), value.strip()))
        return status, headers

    def read_body(self, headers, sink=None):
        """Reads a Content-Length or chunked body. Returns it, or its length when `sink` (a
        callable taking each piece) consumes it."""
        fields = dict(headers)
        pieces = []
        total = 0

        def take(data):
            nonlocal total
            total += len(data)
            if sink:
                sink(data)
            else:
                pieces.append(data)

        if fields.get("transfer-encoding", "").lower() == "chunked":
            while True:
                while b"\r\n" not in self.buffer:
                    self._fill()
                size_line, _, self.buffer = self.buffer.partition(b"\r\n")
                size = int(size_line.split(b";")[0], 16)
                if size == 0:
                    while b"\r\n" not in self.buffer:
                        self._fill()
                    self.buffer = self.buffer.partition(b"\r\n")[2]
                    break
                self._read_exact(size, take)
                self._read_exact(2, lambda crlf: None)
        else:
            self._read_exact(int(fields.get("content-length", "0")), take)
        return total if sink else b"".join(pieces)

    def _read_exact(self, n, take):
        remaining = n
        while remaining > 0:
            if not self.buffer:
                self.buffer = self.sock.recv(1 << 20)
                if not self.buffer:
                    raise ConnectionError("connection closed mid-body")
            piece = self.buffer[:remaining]
            self.buffer = self.buffer[remaining:]
            remaining -= len(piece)
            take(piece)

    def request(self, raw):
        self.send(raw)
        status, headers = self.read_head()
        return status, headers, self.read_body(headers)


def get(path, host="localhost", extra_headers=()):
    lines = [f"GET {path} HTTP/1.1", f"Host: {host}"] + list(extra_headers)
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


# --- process measurements --------------------------------------------------------------------

def memory_kib(pid):
    """VmRSS and VmHWM of a process, in KiB."""
    values = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            name, _, rest = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                values[name] = int(rest.split()[0])
    return values["VmRSS"], values["VmHWM"]


def sha256_of_pattern(size, block):
    """SHA-256 of `size` bytes of `block` repeated (the last copy cut short)."""
    digest = hashlib.sha256()
    full, rest = divmod(size, len(block))
    for _ in range(full):
        digest.update(block)
    digest.update(block[:rest])
    return digest.hexdigest()


# --- misbehaving upstreams -------------------------------------------------------------------

class SilentUpstream:
    """Accepts connections, reads whatever arrives and never answers."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self.connections = []
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        self.sock.settimeout(0.2)
        while not self.stopped.is_set():
            try:
                conn, _ = self.sock.accept()
            except (socket.timeout, OSError):
                continue
            self.accepted += 1
            self.connections.append(conn)

    def stop(self):
        self.stopped.set()
        self.thread.join(5)
        for conn in self.connections:
            conn.close()
        self.sock.close()


class RecordingUpstream:
    """Answers each request 200 after recording its raw bytes up to the end of a chunked body:
    what the gateway really sent, trailers included, which the echo upstream cannot show."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(4)
        self.port = self.sock.getsockname()[1]
        self.received = []
        self.thread = threading.Thread(target=self._serve_one, daemon=True)
        self.thread.start()

    def _serve_one(self):
        self.sock.settimeout(20)
        try:
            conn, _ = self.sock.accept()
        except OSError:
            return
        with conn:
            conn.settimeout(10)
            data = b""
            while not (b"\r\n0\r\n" in data and data.endswith(b"\r\n\r\n")):
                chunk = conn.recv(65536)
                if not chunk:
                    break
                data += chunk
            self.received.append(data)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    def stop(self):
        self.thread.join(20)
        self.sock.close()


def closed_port():
    """A 127.0.0.1 port nothing listens on (bound, never listened, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def connection_refused(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            return False
    except ConnectionRefusedError:
        return True


def parse_metrics(text):
    """{'name{labels}': value} for every sample line."""
    samples = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        samples[key] = float(value)
    return samples

