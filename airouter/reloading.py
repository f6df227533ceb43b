"""SIGHUP in the main process: validate the file first, then replace every worker at once.

Granian's own reload calls the reload hooks and then respawns every worker whatever they
return, one at a time: each old worker is waited for before the next one is replaced, and the
main loop (SIGTERM included) waits with them. `ReloadingServer` keeps granian's signal
handling and worker classes and replaces only its `_reload` and `shutdown`. It relies on
these granian 2.x internals (granian/server/common.py): `_reload(spawn_target,
target_loader)` is called by the main loop when `reload_signal` is set, and must clear it and
`main_loop_interrupt`; `self.wrks` is the list of live workers by index; `_spawn_worker(idx=,
target=, callback_loader=)` builds a worker, `.start()` runs it, `.terminate()` sends it
SIGTERM, `.join(timeout)`, `.is_alive()` and `.kill()` end it; `respawn_interval` is how long
a new worker gets to start before an old one is stopped.

The workers tell a reload from a shutdown through the marker file (`MARKER_ENV`): it holds the
config generation (a number, bumped by each valid reload) or "stop". A worker remembers the
generation it started with; on SIGTERM a different number means it is being replaced.

MPServer is what `granian.Granian` is on a GIL build (the router's workers are processes)."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from granian.server.mp import MPServer

MARKER_ENV = "AIROUTER_GENERATION_FILE"
STOP = "stop"

log = logging.getLogger("airouter")


def read_marker() -> str | None:
    """The marker's text: a generation or "stop"; None when there is none (no main process
    of ours, as in an embedded app)."""
    path = os.environ.get(MARKER_ENV)
    if not path:
        return None
    try:
        return Path(path).read_text(encoding="utf-8").strip()
    except OSError:
        return None


def write_marker(path: Path, value: str) -> None:
    tmp = path.with_suffix(".new")
    tmp.write_text(value, encoding="utf-8")
    tmp.replace(path)


class ReloadingServer(MPServer):
    """Granian's server, with a reload that does nothing unless `accept()` says yes."""

    def __init__(self, *args: Any, accept: Callable[[], float | None], marker: Path,
                 **kwargs: Any) -> None:
        """accept(): validate the file and publish it; the seconds an old worker may take to
        drain (the backstop before it is killed), or None to keep everything as it is."""
        super().__init__(*args, **kwargs)
        self.accept_reload = accept
        self.marker = marker
        self.generation = 0
        write_marker(marker, "0")
        self.draining: list[Any] = []  # old workers still finishing their requests
        self.draining_lock = threading.Lock()

    def _reload(self, spawn_target: Any, target_loader: Any) -> None:
        self.reload_signal = False
        self.main_loop_interrupt.clear()
        drain_for = self.accept_reload()
        if drain_for is None:
            return
        self.generation += 1
        write_marker(self.marker, str(self.generation))
        self.respawned_wrks.clear()
        old: list[Any] = list(self.wrks)
        # New workers first: both generations listen until the old ones stop accepting.
        for idx in range(len(old)):
            wrk: Any = self._spawn_worker(idx=idx, target=spawn_target,
                                          callback_loader=target_loader)
            wrk.start()
            self.wrks[idx] = wrk
        self._metrics.incr_spawn(len(old))
        time.sleep(self.respawn_interval)
        with self.draining_lock:
            self.draining.extend(old)
        for wrk in old:
            wrk.terminate()
        threading.Thread(target=self._reap, args=(old, drain_for), daemon=True).start()

    def _reap(self, old: list[Any], drain_for: float) -> None:
        deadline = time.monotonic() + drain_for
        for wrk in old:
            wrk.join(max(deadline - time.monotonic(), 0.001))
            if wrk.is_alive():
                log.warning("killing old worker-%d after it refused to stop", wrk.idx + 1)
                wrk.kill()
                wrk.join()
            with self.draining_lock:
                self.draining.remove(wrk)

    def shutdown(self, exit_code: int = 0) -> None:
        # Workers still draining after a reload now get the shutdown's grace, not the reload's.
        write_marker(self.marker, STOP)
        with self.draining_lock:
            draining = list(self.draining)
        for wrk in draining:
            wrk.terminate()
        try:
            super().shutdown(exit_code)  # type: ignore[no-untyped-call]
        finally:
            for wrk in draining:
                wrk.join(self.workers_kill_timeout)
                if wrk.is_alive():
                    wrk.kill()
                    wrk.join()


MIGRATE_REQ = Path("/proc/sys/net/ipv4/tcp_migrate_req")


def migrate_req_notice() -> str | None:
    """A line for the operator when Linux would reset, rather than move, the connections
    still queued on a replaced worker's SO_REUSEPORT socket during a reload."""
    try:
        value = MIGRATE_REQ.read_text().strip()
    except OSError:  # not Linux, or before 5.14: nothing to say
        return None
    if value != "0":
        return None
    return ("net.ipv4.tcp_migrate_req is 0: during a reload, a connection still queued on a "
            "replaced worker's socket is reset; `sysctl -w net.ipv4.tcp_migrate_req=1` moves "
            "it to a new worker instead")
