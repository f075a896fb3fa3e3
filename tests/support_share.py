"""Helpers for the sharing tests (no tests here): small groups, a loopback HTTP server, a moto S3 server, a writer script."""

from __future__ import annotations

import contextlib
import functools
import os
import socket
import sys
import threading
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

ISET = "fedcba9876543210"
WIDTHS = {"mean/00": 48, "mean/01": 48, "cls/01": 96, "final": 16}
N = 300
BLOCK = 64


def ids(n: int = N) -> list[str]:
    """Image ids in THINGS style."""
    return [f"training_images/{i:05d}_c/img_{i:05d}.jpg" for i in range(n)]


def bkey(i: int = 0) -> str:
    """The backbone key of test group `i`."""
    return f"tiny-{i:010d}"


def block_data(b: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Rows of block `b`, a pure function of (seed, b, array)."""
    rows = min(N, (b + 1) * BLOCK) - b * BLOCK
    return {name: np.random.default_rng([seed, b, k]).standard_normal((rows, w)).astype(np.float16)
            for k, (name, w) in enumerate(sorted(WIDTHS.items()))}


def full_data(seed: int = 0) -> dict[str, np.ndarray]:
    """Every array as written by `make_group(seed=seed)`."""
    blocks = [block_data(b, seed) for b in range(-(-N // BLOCK))]
    return {name: np.concatenate([bl[name] for bl in blocks]) for name in WIDTHS}


def make_group(root, i: int = 0, *, seed: int = 0, delay: float = 0.0, finalize: bool = True):
    """Write test group `i` (all blocks, `delay` seconds after each) and finalize it."""
    writer = root.create(ISET, bkey(i), ids(), WIDTHS, {"backbone": {"name": "tiny"}}, block_rows=BLOCK)
    for b in writer.pending_blocks():
        writer.write_block(b, block_data(b, seed))
        print(f"wrote {b}", flush=True)
        time.sleep(delay)
    return writer.finalize() if finalize else writer


class _QuietHandler(SimpleHTTPRequestHandler):
    """A static file handler that records requested paths instead of logging them."""

    requests: list[str] = []

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - the stdlib's name
        type(self).requests.append(self.path)


class _FailingHandler(_QuietHandler):
    """A static file handler that answers `status` instead of the file for paths matching `fails`."""

    fails: Callable[[str], bool] = staticmethod(lambda path: False)
    status: int = 500

    def send_head(self):  # noqa: ANN201 - the stdlib's signature
        if type(self).fails(self.path):
            self.send_error(type(self).status)
            return None
        return super().send_head()


@contextlib.contextmanager
def http_server(directory: str | os.PathLike, *, fails: Callable[[str], bool] | None = None,
                status: int = 500) -> Iterator[tuple[str, list[str]]]:
    """Serve `directory` read-only on 127.0.0.1 (a free port); yields (base URL, list of requested paths).

    `fails(path)`: answer HTTP `status` instead of the file for those request paths (a misbehaving server).
    """
    handler_cls = type("Handler", (_FailingHandler,), {"requests": [], "fails": staticmethod(fails or (lambda p: False)),
                                                       "status": status})
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler_cls, directory=os.fspath(directory)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", handler_cls.requests
    finally:
        server.shutdown()
        server.server_close()


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tree_snapshot(path: Path) -> dict[str, tuple[int, int]]:
    """{relative path: (size, mtime_ns)} of every file and folder under `path`."""
    out = {}
    for p in sorted(Path(path).rglob("*")):
        st = p.stat()
        out[str(p.relative_to(path))] = (st.st_size if p.is_file() else -1, st.st_mtime_ns)
    return out


if __name__ == "__main__":
    # python support_share.py ROOT MODE ...: 'slow I DELAY [GATE]' writes group I slowly, waits for the file GATE,
    # then finalizes it;
    # 'die I' writes two blocks then exits without finalizing; 'wait I TIMEOUT' tries to create group I,
    # on GroupLocked waits for it to complete, then prints the digest of 'final'; 'groups A B' writes groups A..B-1.
    from sa.cache import GroupLocked, open_root, wait_for_complete

    root = open_root(sys.argv[1])
    mode = sys.argv[2]
    if mode == "slow":
        writer = make_group(root, int(sys.argv[3]), delay=float(sys.argv[4]), finalize=False)
        gate = Path(sys.argv[5]) if len(sys.argv) > 5 else None
        deadline = time.monotonic() + 60
        while gate is not None and not gate.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        writer.finalize()
        print("finalized", flush=True)
    elif mode == "die":
        w = make_group(root, int(sys.argv[3]), finalize=False)
        os._exit(0)  # leaves the lock behind, with a dead pid
    elif mode == "wait":
        try:
            make_group(root, int(sys.argv[3]))
            print("extracted", flush=True)
        except GroupLocked:
            print("locked, waiting", flush=True)
            group = wait_for_complete(root, f"{ISET}/{bkey(int(sys.argv[3]))}", timeout=float(sys.argv[4]), poll=0.1)
            print(f"reused {group.digest('final')}", flush=True)
    elif mode == "groups":
        for i in range(int(sys.argv[3]), int(sys.argv[4])):
            make_group(root, i, seed=i)
        print("done", flush=True)
