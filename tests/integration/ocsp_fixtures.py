"""OCSP fixtures: a CA whose server certificates name an OCSP responder in their Authority
Information Access, and that responder: an HTTP server on 127.0.0.1 answering each POSTed
request by running `openssl ocsp -index` once (so the CA's index is read fresh every time),
with switches for the failure modes a stapler must survive."""

import http.server
import os
import subprocess
import tempfile
import threading

from crl_fixtures import CA_CONFIG, CertificateAuthority, run


class OcspResponder:
    """Answers POST / with `openssl ocsp` for CA. `mode`: ok | garbage | error (HTTP 500) |
    foreign (signed by a key unrelated to the CA)."""

    def __init__(self):
        self.ca = None
        self.mode = "ok"
        self.requests = 0
        self.dir = tempfile.mkdtemp(prefix="portcullis-ocsp-")
        self.foreign_key = os.path.join(self.dir, "foreign.key")
        self.foreign_cert = os.path.join(self.dir, "foreign.pem")
        run("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
            "-nodes", "-keyout", self.foreign_key, "-out", self.foreign_cert, "-days", "30",
            "-subj", "/CN=Unrelated OCSP Signer")
        lock = threading.Lock()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with lock:
                    server.requests += 1
                    status, answer = server.answer(body)
                self.send_response(status)
                self.send_header("Content-Type", "application/ocsp-response")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def answer(self, request):
        if self.mode == "error":
            return 500, b""
        if self.mode == "garbage":
            return 200, b"this is not an OCSP response" * 4
        req = os.path.join(self.dir, "req.der")
        resp = os.path.join(self.dir, "resp.der")
        with open(req, "wb") as f:
            f.write(request)
        signer, key = (self.foreign_cert, self.foreign_key) if self.mode == "foreign" else (
            self.ca.cert, self.ca.key)
        run("openssl", "ocsp", "-index", os.path.join(self.ca.dir, "index.txt"), "-rsigner",
            signer, "-rkey", key, "-CA", self.ca.cert, "-reqin", req, "-respout", resp,
            "-ndays", "1")
        with open(resp, "rb") as f:
            return 200, f.read()

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


class OcspCertificateAuthority(CertificateAuthority):
    """Issues "server_ocsp" certificates: the server profile plus an AIA OCSP URI."""

    def __init__(self, base, name, common_name, ocsp_url):
        self.ocsp_url = ocsp_url
        super().__init__(base, name, common_name)

    def extension_args(self, section, cdp):
        if section != "server_ocsp":
            return super().extension_args(section, cdp)
        body = CA_CONFIG.split("[ server ]\n", 1)[1].split("\n[", 1)[0]
        path = os.path.join(self.dir, "ext-server-ocsp.cnf")
        with open(path, "w") as f:
            f.write(f"[ ext ]\n{body}\nauthorityInfoAccess = OCSP;URI:{self.ocsp_url}\n")
        return ["-extfile", path, "-extensions", "ext"]


def s_client_status(port, client):
    """`openssl s_client -status` output (stdout) for a handshake with the client certificate."""
    p = subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", "localhost",
         "-status", "-cert", client["cert"], "-key", client["key"]],
        input="", capture_output=True, text=True, timeout=15)
    return p.stdout
