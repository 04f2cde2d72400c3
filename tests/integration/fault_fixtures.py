"""Fault injection fixtures: a raw-socket HTTP/1.1 server on 127.0.0.1 that answers correctly or
misbehaves on demand (refuses, hangs, trickles, resets mid-body, sends an endless or corrupt
body, closes a keep-alive connection as it is reused), and what /proc says about a process."""

import os
import select
import socket
import struct
import subprocess
import threading
import time

MODES = ("ok", "refuse", "hang", "trickle", "reset", "head_then_reset", "oversized", "corrupt",
         "close_on_reuse")


class FaultServer:
    """Answers each request with `respond(method, path, body) -> (status, content_type, body)`,
    or fails as `mode` says:

      ok              answers in full, keeping the connection open unless asked to close
      refuse          nothing listens on the port: connections are refused
      hang            reads the request and never answers
      trickle         sends the answer one byte every `trickle_interval` seconds
      reset           sends the head and half the body, then resets the connection (RST),
                      once `reset_gate` is set when there is one
      head_then_reset sends the head alone, then resets the connection before any of the body
      oversized       answers 200 with a chunked body that does not end (stops after
                      `oversized_cap` bytes or when the peer stops reading)
      corrupt         the answer's body with its middle third scrambled
      close_on_reuse  answers the first request of a connection and closes the connection,
                      unanswered, when its second request arrives

    Counters are per server: `connections` accepted, `requests` read in full, `answered`,
    `peer_closed` (connections the client closed while this side was hanging or trickling),
    `open` connections at this moment, `sent` bytes."""

    def __init__(self, respond=None, mode="ok", trickle_interval=0.2, oversized_cap=64 << 20):
        self.respond = respond or (lambda method, path, body: (200, "text/plain", b"ok\n"))
        self.trickle_interval = trickle_interval
        self.oversized_cap = oversized_cap
        self.lock = threading.Lock()
        self.connections = self.requests = self.answered = self.peer_closed = self.open = 0
        self.sent = 0
        self.hang_durations = []  # seconds from a hung request to the client closing
        self.reset_gate = None  # an Event: "reset" waits for it before resetting
        self.stopped = threading.Event()
        self.clients = set()
        self.listener = None
        self.port = 0
        self._listen()
        self.mode = "ok"
        self.set_mode(mode)
        self.thread = threading.Thread(target=self._accept_loop, daemon=True)
        self.thread.start()

    def url(self, path="/"):
        return f"http://127.0.0.1:{self.port}{path}"

    def set_mode(self, mode):
        assert mode in MODES, mode
        with self.lock:
            if mode == "refuse" and self.listener:
                self.listener.close()
                self.listener = None
            elif mode != "refuse" and not self.listener:
                self._listen()
            self.mode = mode

    def _listen(self):
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # Listening again after "refuse": another socket may hold the port for a moment (the
        # local end of a connection elsewhere on the machine).
        deadline = time.monotonic() + 10
        while True:
            try:
                listener.bind(("127.0.0.1", self.port))
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                self.stopped.wait(0.05)
        listener.listen(64)
        self.port = listener.getsockname()[1]
        self.listener = listener

    def count(self, name, n=1):
        with self.lock:
            setattr(self, name, getattr(self, name) + n)

    def _accept_loop(self):
        while not self.stopped.is_set():
            listener = self.listener
            if listener is None:
                self.stopped.wait(0.05)
                continue
            try:
                ready, _, _ = select.select([listener], [], [], 0.1)
                if not ready:
                    continue
                conn, _ = listener.accept()
            except (OSError, ValueError):
                continue  # closed by set_mode("refuse")
            self.count("connections")
            with self.lock:
                self.clients.add(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn):
        self.count("open")
        try:
            conn.settimeout(0.2)
            buffer = b""
            served = 0
            while not self.stopped.is_set():
                request, buffer = self._read_request(conn, buffer)
                if request is None:
                    return
                self.count("requests")
                mode = self.mode
                method, path, body, close = request
                if mode == "close_on_reuse" and served == 1:
                    return
                if mode == "hang":
                    self._hang(conn)
                    return
                status, content_type, answer = self.respond(method, path, body)
                if not self._answer(conn, mode, status, content_type, answer, close):
                    return
                served += 1
                self.count("answered")
                if close:
                    return
        finally:
            with self.lock:
                self.clients.discard(conn)
                self.open -= 1
            try:
                conn.close()
            except OSError:
                pass

    def _read_request(self, conn, buffer):
        """((method, path, body, wants_close), rest) or (None, b"") once the peer has gone."""
        while b"\r\n\r\n" not in buffer:
            chunk = self._recv(conn)
            if not chunk:
                return None, b""
            buffer += chunk
        head, _, rest = buffer.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        method, path = lines[0].split(" ")[:2]
        fields = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            fields[name.strip().lower()] = value.strip()
        length = int(fields.get("content-length", "0"))
        while len(rest) < length:
            chunk = self._recv(conn)
            if not chunk:
                return None, b""
            rest += chunk
        close = fields.get("connection", "").lower() == "close"
        return (method, path, rest[:length], close), rest[length:]

    def _recv(self, conn):
        """The next bytes, or b"" when the peer closed, reset, or the server stops."""
        while not self.stopped.is_set():
            try:
                return conn.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                return b""
        return b""

    def _hang(self, conn):
        started = time.monotonic()
        if not self._recv(conn):
            if not self.stopped.is_set():
                with self.lock:
                    self.peer_closed += 1
                    self.hang_durations.append(time.monotonic() - started)

    def _send(self, conn, data):
        try:
            conn.sendall(data)
        except OSError:
            return False
        self.count("sent", len(data))
        return True

    def _answer(self, conn, mode, status, content_type, body, close):
        if mode == "corrupt":
            third = len(body) // 3
            body = body[:third] + bytes(b ^ 0x5A for b in body[third:2 * third]) + body[2 * third:]
        reason = {200: "OK", 404: "Not Found", 500: "Internal Server Error"}.get(status, "Status")
        if mode == "oversized":
            head = (f"HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\n"
                    "Transfer-Encoding: chunked\r\n\r\n").encode()
            piece = b"%x\r\n" % 65536 + b"\0" * 65536 + b"\r\n"
            conn.settimeout(5)
            if not self._send(conn, head):
                return False
            while self.sent < self.oversized_cap and not self.stopped.is_set():
                if not self._send(conn, piece):
                    return False
            return False
        head = (f"HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\n"
                f"{'Connection: close' + chr(13) + chr(10) if close else ''}\r\n").encode()
        if mode == "trickle":
            for byte in head + body:
                if not self._send(conn, bytes([byte])):
                    self.count("peer_closed")
                    return False
                if self.stopped.wait(self.trickle_interval):
                    return False
            return True
        if mode == "head_then_reset":
            self._send(conn, head)
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            return False
        if mode == "reset":
            self._send(conn, head + body[:len(body) // 2])
            if self.reset_gate:
                self.reset_gate.wait(10)
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            return False
        return self._send(conn, head + body)

    def stop(self):
        self.stopped.set()
        self.thread.join(5)
        with self.lock:
            if self.listener:
                self.listener.close()
            for conn in list(self.clients):
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


# --- what /proc says about a process -------------------------------------------------------

def fd_count(pid):
    """Open file descriptors of a process."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def fd_targets(pid):
    """What each open descriptor of a process is ("socket:[123]", a path, ...), sorted."""
    targets = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            targets.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:
            pass
    return sorted(targets)


def cpu_seconds(pid):
    """User plus system CPU time a process has used, in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # Fields 14 and 15 of proc(5) (utime, stime); the split starts at field 3.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def sanitized(binary):
    """True when `binary` is built with AddressSanitizer or ThreadSanitizer (their runtime
    libraries are linked in)."""
    libraries = subprocess.run(["ldd", binary], capture_output=True, text=True).stdout
    return "libasan" in libraries or "libtsan" in libraries
