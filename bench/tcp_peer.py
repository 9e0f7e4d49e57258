"""The far end of the tunnel benchmark, in a process of its own: a TCP server on loopback that
either swallows what it gets and answers with the byte count (`sink`), sends N bytes (`source`),
or echoes (`echo`). The first line a client sends names the mode: b"sink\n", b"source N\n",
b"echo\n". Prints its port on stdout."""

import socket
import sys
import threading

BLOCK = 1 << 20


def _line(conn: socket.socket) -> bytes:
    out = b""
    while not out.endswith(b"\n"):
        got = conn.recv(1)
        if not got:
            break
        out += got
    return out.strip()


def _serve(conn: socket.socket) -> None:
    with conn:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        mode, _, arg = _line(conn).partition(b" ")
        if mode == b"sink":
            total = 0
            while data := conn.recv(BLOCK):
                total += len(data)
            conn.sendall(f"{total}\n".encode())
        elif mode == b"source":
            left = int(arg)
            block = b"\x5a" * BLOCK
            while left > 0:
                conn.sendall(block[: min(left, BLOCK)])
                left -= BLOCK
            conn.shutdown(socket.SHUT_WR)
            while conn.recv(BLOCK):  # wait for the client's close: no reset drops data in flight
                pass
        elif mode == b"echo":
            while data := conn.recv(BLOCK):
                conn.sendall(data)


def main() -> None:
    server = socket.create_server(("127.0.0.1", 0), backlog=128)
    print(server.getsockname()[1], flush=True)
    while True:
        conn, _ = server.accept()
        threading.Thread(target=_serve, args=(conn,), daemon=True).start()


if __name__ == "__main__":
    sys.exit(main())
