"""A TCP proxy on 127.0.0.1 that breaks the first event stream through it right after its
first numbered event: a real dropped connection, at a known place, for resume tests."""

from __future__ import annotations

import socket
import threading
from contextlib import suppress

# sse_starlette ends an event with an empty line; it writes CRLF, a parser must take LF too.
_EVENT_ENDS = (b"\r\n\r\n", b"\n\n")


class DroppingProxy:
    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.heads: list[str] = []  # the request head of every connection, in order
        self.cuts = 0
        self._cut_next = True
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self._listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = client.recv(65536)
            if not chunk:
                client.close()
                return
            head += chunk
        upstream = socket.create_connection(self.upstream)
        upstream.sendall(head)
        with self._lock:
            self.heads.append(head.decode("latin-1"))
            cut = self._cut_next and b"/events" in head.split(b"\r\n", 1)[0]
            self._cut_next = self._cut_next and not cut
        threading.Thread(target=_pump, args=(client, upstream), daemon=True).start()
        buffered = b""
        try:
            while data := upstream.recv(65536):
                if not cut:
                    client.sendall(data)
                    continue
                buffered += data
                # The first event's ``id:`` line, past the response head (whose
                # ``x-request-id:`` ends in ``id: `` too).
                head_end = buffered.find(b"\r\n\r\n")
                start = buffered.find(b"\nid: ", head_end + 4) if head_end >= 0 else -1
                ends = [
                    found + len(end)
                    for end in _EVENT_ENDS
                    if start >= 0 and (found := buffered.find(end, start)) >= 0
                ]
                if ends:
                    client.sendall(buffered[: min(ends)])
                    with self._lock:
                        self.cuts += 1
                    break
        except OSError:
            pass
        finally:
            for sock in (client, upstream):
                with suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()


def _pump(source: socket.socket, target: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            target.sendall(data)
    except OSError:
        pass
