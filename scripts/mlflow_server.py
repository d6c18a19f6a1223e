#!/usr/bin/env python3
"""A local MLflow tracking server on SQLite (default) or a real PostgreSQL server on 127.0.0.1.

    make mlflow-server                 # sqlite:///mlflow.db, artifacts in ./mlruns
    make mlflow-server db=postgres     # initdb + postgres under mlruns/.postgres, then mlflow server

Credentials never live in code or on a command line: the database password comes from PGPASSWORD
when set, else from a generated libpq password file (mode 0600, PGPASSFILE) beside the data
directory; the server reads its DSN (which carries no password) from MLFLOW_BACKEND_STORE_URI.
tests/test_mlflow_postgres.py drives the same functions on free ports and temp folders.
"""

from __future__ import annotations

import argparse
import glob
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

DB_USER = "mlflow"
DB_NAME = "mlflow"


def pg_bin(name: str) -> str | None:
    """A PostgreSQL server binary: on PATH, else Debian's /usr/lib/postgresql/<major>/bin."""
    found = shutil.which(name)
    if found:
        return found
    candidates = glob.glob(f"/usr/lib/postgresql/*/bin/{name}")
    return max(candidates, key=lambda p: int(Path(p).parts[-3])) if candidates else None


def unavailable_reason() -> str | None:
    """Why a local PostgreSQL cannot be started here, or None when it can."""
    missing = [t for t in ("initdb", "pg_ctl", "createdb") if pg_bin(t) is None]
    if missing:
        return (
            f"PostgreSQL server binaries not installed ({', '.join(missing)}): apt-get install -y postgresql"
        )
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root without a 'postgres' system user to run the server as"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Postgres:
    """One PostgreSQL cluster in `root` (initdb on first start), listening on 127.0.0.1:`port` only.

    postgres refuses to run as root, so as root the cluster belongs to the `postgres` system user
    (created by Debian's package) and every server command runs through runuser.
    """

    def __init__(self, root: Path, port: int, password: str | None = None):
        self.root, self.port = Path(root).resolve(), port
        self.data, self.log = self.root / "pgdata", self.root / "postgres.log"
        self.passfile = self.root / "pgpass"
        self.password = password or os.environ.get("PGPASSWORD") or self._stored_password()
        reason = unavailable_reason()
        if reason:
            raise RuntimeError(reason)
        self.owner = pwd.getpwnam("postgres") if os.geteuid() == 0 else None

    @property
    def dsn(self) -> str:
        """SQLAlchemy URL without the password (libpq takes it from PGPASSWORD or PGPASSFILE).

        The driver is explicit: SQLAlchemy 2.1 maps plain postgresql:// to psycopg 3, not psycopg2.
        """
        return f"postgresql+psycopg2://{DB_USER}@127.0.0.1:{self.port}/{DB_NAME}"

    def client_env(self) -> dict[str, str]:
        """What a client process (the MLflow server) needs besides the DSN to log in."""
        if self.passfile.exists():
            return {"PGPASSFILE": str(self.passfile)}
        return {"PGPASSWORD": self.password}

    def _stored_password(self) -> str:
        if self.passfile.exists():
            return self.passfile.read_text().strip().rsplit(":", 1)[-1]
        password = secrets.token_urlsafe(24)
        self.passfile.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.passfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:  # libpq format host:port:db:user:password; any port of localhost
            f.write(f"127.0.0.1:*:*:{DB_USER}:{password}\n")
        return password

    def _run(self, *cmd: str, env: dict | None = None) -> None:
        prefix = ["runuser", "-u", "postgres", "--"] if self.owner else []
        done = subprocess.run(prefix + list(cmd), capture_output=True, text=True, env=env, cwd=self.root)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd[:2])} failed ({done.returncode}): {done.stderr.strip()}")

    def _own(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        if self.owner:
            os.chown(path, self.owner.pw_uid, self.owner.pw_gid)

    def start(self) -> Postgres:
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o755)  # the postgres user must reach its folders inside
        if self.owner:
            shut = [p for p in self.root.parents if not os.stat(p).st_mode & 0o001]
            if shut:
                raise RuntimeError(
                    f"{shut[0]} is closed to other users: the postgres user cannot reach {self.root}"
                )
        run_dir = self.root / "run"
        self._own(run_dir)
        if not (self.data / "PG_VERSION").exists():
            self._own(self.data)
            pwfile = run_dir / "initpw"  # read once by initdb, then deleted
            fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(self.password + "\n")
            if self.owner:
                os.chown(pwfile, self.owner.pw_uid, self.owner.pw_gid)
            try:
                self._run(
                    pg_bin("initdb"),
                    "-D",
                    str(self.data),
                    "-U",
                    DB_USER,
                    f"--pwfile={pwfile}",
                    "--auth=scram-sha-256",
                    "--encoding=UTF8",
                    "--no-instructions",
                )
            finally:
                pwfile.unlink(missing_ok=True)
            created = True
        else:
            created = False
        if not self.log.exists():
            self.log.touch()
            if self.owner:
                os.chown(self.log, self.owner.pw_uid, self.owner.pw_gid)
        opts = f"-c listen_addresses=127.0.0.1 -p {self.port} -c unix_socket_directories={run_dir}"
        self._run(
            pg_bin("pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-o", opts, "-w", "-t", "60", "start"
        )
        if created:
            env = {**os.environ, "PGPASSWORD": self.password}
            self._run(
                pg_bin("createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", DB_USER, DB_NAME, env=env
            )
        return self

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self._run(pg_bin("pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")


def start_mlflow(
    backend_uri: str, artifacts: Path, port: int, env: dict[str, str] | None = None, log: Path | None = None
) -> subprocess.Popen:
    """`mlflow server` on 127.0.0.1 with proxied artifacts and no job runner; its own process group."""
    artifacts.mkdir(parents=True, exist_ok=True)
    server_env = {
        **os.environ,
        **(env or {}),
        "MLFLOW_BACKEND_STORE_URI": backend_uri,  # read by the CLI: never on the command line
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",  # 2 processes and ~0.5 GB instead of 10 and ~2.4 GB
    }
    mlflow = str(Path(sys.executable).parent / "mlflow")
    cmd = [
        mlflow,
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
        "--serve-artifacts",
        "--artifacts-destination",
        str(artifacts),
    ]
    out = open(log, "ab") if log else None  # noqa: SIM115 (kept open for the child's lifetime)
    return subprocess.Popen(
        cmd, env=server_env, stdout=out, stderr=subprocess.STDOUT if out else None, start_new_session=True
    )


def wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mlflow server exited with {proc.returncode} before it was healthy")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"mlflow server at {url} not healthy after {timeout:.0f} s")


def stop_process_group(proc: subprocess.Popen, timeout: float = 20) -> None:
    """SIGTERM the server's own process group (uvicorn workers included), SIGKILL if it hangs."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Run a local MLflow tracking server (Ctrl-C stops it).")
    ap.add_argument("--db", choices=["sqlite", "postgres"], default="sqlite")
    ap.add_argument("--port", type=int, default=int(os.environ.get("MLFLOW_PORT", "5000")))
    ap.add_argument("--pg-port", type=int, default=int(os.environ.get("NEUROK_PG_PORT", "55432")))
    ap.add_argument("--dir", type=Path, default=Path("mlruns"), help="artifacts (and Postgres data) root")
    args = ap.parse_args(argv)
    pg = None
    if args.db == "postgres":
        pg = Postgres(args.dir / ".postgres", args.pg_port).start()
        backend, env, artifacts = pg.dsn, pg.client_env(), args.dir / ".postgres" / "artifacts"
        print(f"postgres: {pg.dsn} (data {pg.data}, log {pg.log})")
    else:
        backend, env, artifacts = "sqlite:///mlflow.db", {}, args.dir
    proc = start_mlflow(backend, artifacts, args.port, env)
    url = f"http://127.0.0.1:{args.port}"
    try:
        wait_healthy(url, proc)
        print(f"mlflow: {url}  (export MLFLOW_TRACKING_URI={url}; Ctrl-C stops)")
        signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt))
        proc.wait()
    except KeyboardInterrupt:
        pass
    finally:
        stop_process_group(proc)
        if pg:
            pg.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
