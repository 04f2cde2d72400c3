"""Revocation fixtures: a CA hierarchy run with `openssl ca` (so certificates can be revoked and
CRLs published the way real CAs do it) and an HTTP server on 127.0.0.1 that publishes the CRLs,
with switches for the failure modes the gateway must survive."""

import datetime
import hashlib
import http.server
import os
import ssl
import subprocess
import threading

CA_CONFIG = """
[ ca ]
default_ca = ca_default
[ ca_default ]
dir = {dir}
database = $dir/index.txt
new_certs_dir = $dir/issued
certificate = $dir/ca.pem
private_key = $dir/ca.key
serial = $dir/serial
crlnumber = $dir/crlnumber
default_md = sha256
default_days = 30
default_crl_days = {crl_days}
policy = policy_any
unique_subject = no
copy_extensions = none
[ policy_any ]
commonName = supplied
organizationName = optional
[ v3_ca ]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
[ client ]
basicConstraints = CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[ server ]
basicConstraints = CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost,IP:127.0.0.1
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
"""


def run(*args, **kwargs):
    return subprocess.run(args, check=True, capture_output=True, text=True, **kwargs)


class CertificateAuthority:
    """One CA directory driven by `openssl ca`."""

    def __init__(self, base, name, common_name, parent=None, crl_days=1, cdp=None):
        self.dir = os.path.join(base, name)
        self.name = name
        os.makedirs(os.path.join(self.dir, "issued"))
        open(os.path.join(self.dir, "index.txt"), "w").close()
        with open(os.path.join(self.dir, "serial"), "w") as f:
            f.write("1000\n")
        with open(os.path.join(self.dir, "crlnumber"), "w") as f:
            f.write("01\n")
        self.config = os.path.join(self.dir, "ca.cnf")
        with open(self.config, "w") as f:
            f.write(CA_CONFIG.format(dir=self.dir, crl_days=crl_days))
        self.key = os.path.join(self.dir, "ca.key")
        self.cert = os.path.join(self.dir, "ca.pem")
        if parent is None:
            run("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                "-nodes", "-keyout", self.key, "-out", self.cert, "-days", "60", "-subj",
                f"/CN={common_name}", "-config", self.config, "-extensions", "v3_ca")
        else:
            csr = os.path.join(self.dir, "ca.csr")
            run("openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                "-nodes", "-keyout", self.key, "-out", csr, "-subj", f"/CN={common_name}")
            run("openssl", "ca", "-batch", "-config", parent.config, "-in", csr, "-out", self.cert,
                "-notext", *parent.extension_args("v3_ca", cdp))

    def extension_args(self, section, cdp):
        """`openssl ca` arguments for SECTION, plus a CRL Distribution Point when CDP is a URL."""
        if not cdp:
            return ["-extensions", section]
        body = CA_CONFIG.split(f"[ {section} ]\n", 1)[1].split("\n[", 1)[0]
        path = os.path.join(self.dir, f"ext-{hashlib.sha256(cdp.encode()).hexdigest()[:12]}.cnf")
        with open(path, "w") as f:
            f.write(f"[ ext ]\n{body}\ncrlDistributionPoints = URI:{cdp}\n")
        return ["-extfile", path, "-extensions", "ext"]

    def issue(self, name, common_name, extensions="client", startdate=None, enddate=None, cdp=None):
        """Writes NAME.pem (leaf), NAME.key and NAME-chain.pem (leaf + this CA) next to the CA.
        CDP, when given, is the URL put in the certificate's CRL Distribution Points."""
        key = os.path.join(self.dir, f"{name}.key")
        csr = os.path.join(self.dir, f"{name}.csr")
        cert = os.path.join(self.dir, f"{name}.pem")
        run("openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
            "-nodes", "-keyout", key, "-out", csr, "-subj", f"/CN={common_name}")
        args = ["openssl", "ca", "-batch", "-config", self.config, "-in", csr, "-out", cert,
                "-notext", *self.extension_args(extensions, cdp)]
        if startdate:
            args += ["-startdate", startdate]
        if enddate:
            args += ["-enddate", enddate]
        run(*args)
        chain = os.path.join(self.dir, f"{name}-chain.pem")
        with open(chain, "w") as out:
            out.write(read_text(cert) + read_text(self.cert))
        return {"cert": cert, "key": key, "chain": chain}

    def revoke(self, cert_path):
        run("openssl", "ca", "-batch", "-config", self.config, "-revoke", cert_path)

    def crl(self, der=True, last_update=None, next_update=None):
        """Generates a fresh CRL (next cRLNumber) and returns its bytes. LAST_UPDATE and
        NEXT_UPDATE (datetimes, UTC) override thisUpdate and nextUpdate: a CRL already past its
        nextUpdate is how a stale one is made without touching the clock."""
        pem = os.path.join(self.dir, "current.crl.pem")
        args = ["openssl", "ca", "-batch", "-config", self.config, "-gencrl", "-out", pem]
        if last_update:
            args += ["-crl_lastupdate", last_update.strftime("%Y%m%d%H%M%SZ")]
        if next_update:
            args += ["-crl_nextupdate", next_update.strftime("%Y%m%d%H%M%SZ")]
        run(*args)
        if not der:
            with open(pem, "rb") as f:
                return f.read()
        return run_bytes("openssl", "crl", "-in", pem, "-outform", "DER")


def read_text(path):
    with open(path) as f:
        return f.read()


def run_bytes(*args):
    return subprocess.run(args, check=True, capture_output=True).stdout


def utc_now():
    return datetime.datetime.now(datetime.timezone.utc)


def with_bad_signature(der):
    """The same DER CRL with the last octet of its signature flipped: parses, does not verify."""
    return der[:-1] + bytes([der[-1] ^ 0x01])


def self_signed_ca(base, name, common_name):
    """A private root that publishes no CRL (no CDP anywhere) and issues client certificates."""
    return CertificateAuthority(base, name, common_name)


def sha256_fingerprint(pem_path):
    out = run("openssl", "x509", "-in", pem_path, "-noout", "-fingerprint", "-sha256").stdout
    return out.strip().split("=", 1)[1].replace(":", "").lower()


class CrlServer:
    """Publishes CRLs at /NAME.crl on 127.0.0.1 with ETags; `mode` switches to a failure.
    With `tls=(chain, key)` it serves https and records the SNI names clients sent."""

    def __init__(self, tls=None):
        self.files = {}
        self.mode = "ok"  # ok | 404 | 500 | garbage | oversized | hang
        self.requests = 0
        self.not_modified = 0
        self.release = threading.Event()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                server.requests += 1
                name = self.path.lstrip("/")
                if server.mode == "hang":
                    server.release.wait(30)
                    return
                if server.mode in ("404", "500"):
                    self.send_response(int(server.mode))
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if name not in server.files:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body = server.files[name]
                if server.mode == "garbage":
                    body = b"this is not a CRL" * 10
                etag = '"' + hashlib.sha256(body).hexdigest()[:16] + '"'
                if self.headers.get("If-None-Match") == etag and server.mode == "ok":
                    server.not_modified += 1
                    self.send_response(304)
                    self.send_header("ETag", etag)
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/pkix-crl")
                self.send_header("ETag", etag)
                if server.mode == "oversized":
                    # Claims far more than any CRL limit; the gateway must stop reading.
                    self.send_header("Content-Length", str(1 << 40))
                    self.end_headers()
                    try:
                        for _ in range(64):
                            self.wfile.write(b"\0" * 65536)
                    except OSError:
                        pass
                    return
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.scheme = "http"
        self.server_names = []
        if tls:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*tls)
            context.sni_callback = lambda sock, name, ctx: self.server_names.append(name)
            self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
            self.scheme = "https"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, name, host="127.0.0.1"):
        return f"{self.scheme}://{host}:{self.port}/{name}"

    def stop(self):
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()
