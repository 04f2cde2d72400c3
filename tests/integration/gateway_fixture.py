"""Starts the real portcullis binary and its built-in echo upstream on free 127.0.0.1 ports, and
waits for readiness by polling, never by sleeping a fixed time."""

import json
import os
import signal
import socket
import subprocess
import tempfile
import textwrap
import time
import urllib.error
import urllib.request

BIN = os.environ.get("PORTCULLIS_BIN", "portcullis")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout=20.0, interval=0.05, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def http_get(url, timeout=5):
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except OSError:
        return None, ""


def http_post(url, timeout=5):
    req = urllib.request.Request(url, data=b"", method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


class EchoUpstream:
    def __init__(self):
        self.port = free_port()
        self.proc = subprocess.Popen([BIN, "echo-upstream", "--listen", f"127.0.0.1:{self.port}"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: http_get(self.url("/__stats"))[0] == 200, what="echo upstream")

    def url(self, path):
        return f"http://127.0.0.1:{self.port}{path}"

    def stats(self):
        """{"requests", "connections", "bytes_received"}, /__stats requests not counted."""
        return json.loads(http_get(self.url("/__stats"))[1])

    def requests(self):
        return self.stats()["requests"]

    def stop(self):
        self.proc.terminate()
        self.proc.wait(10)


class Gateway:
    """portcullis with a generated config. `extra` is YAML appended at the top level."""

    def __init__(self, server_chain, server_key, truststore, upstream_port, extra="", wait_ready=True,
                 listener_extra="", tls_extra="", routes=None, upstreams=None,
                 log_level="debug", access_log="off", shutdown_grace="5s", runtime_extra="",
                 io_threads=2, env=None):
        """`tls_extra` is appended inside the listener's tls map (", min_version: ..."), `routes`
        and `upstreams` replace the single catch-all route to the upstream `app`.
        `listener_extra` holds listener keys ("max_connections: 3\n"); it is re-indented to
        the listener's level whatever indentation it was given. `env` adds to the environment."""
        self.port = free_port()
        self.admin_port = free_port()
        self.dir = tempfile.mkdtemp(prefix="portcullis-gw-")
        self.config = os.path.join(self.dir, "portcullis.yaml")
        listener_extra = textwrap.indent(textwrap.dedent(listener_extra).strip("\n"), "    ")
        if listener_extra:
            listener_extra += "\n"
        if routes is None:
            routes = """      - match: { host: "*", path_prefix: / }
        upstream: app
"""
        if upstreams is None:
            upstreams = f"""  app: {{ endpoints: ["127.0.0.1:{upstream_port}"], connect_timeout: 2s, response_timeout: 5s }}
"""
        # A key written twice is a configuration error: tls_extra may set its own timeout.
        handshake_timeout = "" if "handshake_timeout" in tls_extra else ", handshake_timeout: 5s"
        # A port free when chosen may be taken before the gateway binds it (another test's
        # outgoing connection): then the gateway starts again on other ports.
        for attempt in range(3):
            if attempt:
                self.log.close()
                self.port, self.admin_port = free_port(), free_port()
            with open(self.config, "w") as f:
                f.write(f"""listeners:
  - name: public
    address: 127.0.0.1:{self.port}
    tls: {{ certificate: {server_chain}, private_key: {server_key}{handshake_timeout}{tls_extra} }}
    client_auth: {{ truststore: {truststore}, max_chain_depth: 4 }}
{listener_extra}    routes:
{routes}upstreams:
{upstreams}admin: {{ address: 127.0.0.1:{self.admin_port} }}
logging: {{ level: {log_level}, access_log: {access_log} }}
runtime: {{ io_threads: {io_threads}, shutdown_grace: {shutdown_grace}{runtime_extra} }}
{extra}""")
            self.log = open(os.path.join(self.dir, "stderr.log"), "w+")
            self.proc = subprocess.Popen([BIN, "--config", self.config], stdout=subprocess.DEVNULL,
                                         stderr=self.log, env={**os.environ, **(env or {})})
            wait_for(lambda: self.proc.poll() is not None or self.admin("/healthz")[0] == 200,
                     what="admin listener")
            if self.proc.poll() is None or "Address already in use" not in self.stderr():
                break
        if self.proc.poll() is not None:
            raise AssertionError("gateway exited: " + self.stderr())
        if wait_ready:
            wait_for(lambda: self.admin("/readyz")[0] == 200, what="/readyz")

    def admin(self, path):
        return http_get(f"http://127.0.0.1:{self.admin_port}{path}")

    def status(self):
        return json.loads(self.admin("/status")[1])

    def metric(self, name):
        for line in self.admin("/metrics")[1].splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{") and line.split(" ")[0] == name:
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    def stderr(self):
        self.log.flush()
        self.log.seek(0)
        return self.log.read()

    def stop(self):
        """SIGTERM, then the exit code (killed after 15 s, which a test may then assert on)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if not self.log.closed:
            self.log.close()
        return self.proc.returncode


def curl(port, cert=None, key=None, cacert=None, path="/", extra=()):
    """Returns (exit code, HTTP status or None, body, stderr)."""
    args = ["curl", "-sS", "--max-time", "10", "-o", "-", "-w", "\n%{http_code}",
            "--resolve", f"localhost:{port}:127.0.0.1"]
    if cacert:
        args += ["--cacert", cacert]
    if cert:
        args += ["--cert", cert, "--key", key]
    args += list(extra) + [f"https://localhost:{port}{path}"]
    p = subprocess.run(args, capture_output=True, text=True)
    body, _, code = p.stdout.rpartition("\n")
    status = int(code) if code.isdigit() and code != "000" else None
    return p.returncode, status, body, p.stderr
