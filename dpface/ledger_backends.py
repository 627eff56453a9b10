"""Where a :class:`dpface.ledger.Ledger` keeps its tables: SQLite (the default) or PostgreSQL.

The ledger's logic -- budgets, composition, refusals, pseudonyms, the hash chain -- lives in
:mod:`dpface.ledger` and is the same for both. What differs sits here, behind :class:`Backend`:
how a location is opened (and refused when it is not a ledger), the SQL dialect (placeholders,
column types), how a write transaction excludes the other writers, and how a copy is made.

* :class:`SQLiteBackend`: one file, WAL journal, ``synchronous=FULL``; a write transaction is
  ``BEGIN IMMEDIATE`` (the database's one write lock), so all writers are serialised.
* :class:`PostgresBackend` (psycopg 3, imported only when a ``postgresql://`` URL is opened):
  the tables live in the connection's current schema (the first of its ``search_path``, set
  with ``?options=-csearch_path%3DNAME``). A write transaction (READ COMMITTED) first takes a
  transaction-scoped advisory lock on the privacy unit it decides about (subject or photo), so
  the budget check and the write for one unit never interleave with another writer's; the
  chain head row is then locked ``FOR UPDATE`` just before an entry is appended, so entries are
  numbered and chained one at a time. Locks are always taken in that order (unit, then head),
  so writers cannot deadlock; a process that dies mid-transaction is rolled back by the server
  and its locks released.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sqlite3
import urllib.parse
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path, PurePath
from typing import Any

from .errors import LedgerError, NotALedgerError, UsageError

APPLICATION_ID = 0x64706663  # "dpfc": PRAGMA application_id of a dpface ledger
SCHEMA_VERSION = 2  # PRAGMA user_version (SQLite), meta 'user_version' (PostgreSQL)
TEMPLATE_STORE_APPLICATION_ID = 0x64707473  # "dpts": dpface.linking.TemplateStore
_SQLITE_MAGIC = b"SQLite format 3\x00"
_DPFACE_FILES = {
    APPLICATION_ID: "a dpface ledger",
    TEMPLATE_STORE_APPLICATION_ID: "a dpface template store (dpface.linking)",
}
# advisory lock classes (the first key of pg_advisory_xact_lock(int4, int4))
_LOCK_UNIT = APPLICATION_ID
_LOCK_CREATE = APPLICATION_ID + 1
POSTGRES_SCHEMES = ("postgresql", "postgres")

SQLITE_SCHEMA = (
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    """CREATE TABLE subjects (
        subject TEXT PRIMARY KEY,
        budget_epsilon REAL NOT NULL CHECK (budget_epsilon >= 0),
        budget_delta REAL NOT NULL CHECK (budget_delta >= 0 AND budget_delta < 1),
        created_at REAL NOT NULL
    )""",
    """CREATE TABLE entries (
        id INTEGER PRIMARY KEY,
        kind TEXT NOT NULL CHECK (kind IN ('release', 'refusal', 'budget')),
        subject TEXT NOT NULL REFERENCES subjects(subject),
        mechanism TEXT NOT NULL,
        epsilon REAL NOT NULL CHECK (epsilon >= 0),
        delta REAL NOT NULL CHECK (delta >= 0 AND delta < 1),
        dp_event TEXT NOT NULL,
        run_id TEXT NOT NULL,
        note TEXT NOT NULL,
        seeded INTEGER NOT NULL,
        is_dp INTEGER NOT NULL,
        created_at REAL NOT NULL,
        prev_hash TEXT NOT NULL,
        hash TEXT NOT NULL
    )""",
    "CREATE INDEX entries_by_subject ON entries(subject, kind)",
    "CREATE INDEX entries_by_run ON entries(run_id)",
    """CREATE TABLE pseudonyms (
        subject TEXT NOT NULL REFERENCES subjects(subject),
        key TEXT NOT NULL,
        vector BLOB NOT NULL,
        dtype TEXT NOT NULL,
        shape TEXT NOT NULL,
        entry_id INTEGER NOT NULL REFERENCES entries(id),
        created_at REAL NOT NULL,
        PRIMARY KEY (subject, key)
    )""",
    """CREATE TABLE face_units (
        unit TEXT PRIMARY KEY,
        photo TEXT NOT NULL,
        n INTEGER NOT NULL,
        x0 INTEGER NOT NULL, y0 INTEGER NOT NULL, x1 INTEGER NOT NULL, y1 INTEGER NOT NULL,
        created_at REAL NOT NULL,
        UNIQUE (photo, n)
    )""",
    """CREATE TABLE runs (
        run_id TEXT PRIMARY KEY,
        started_at REAL,
        finished_at REAL,
        settings TEXT,
        summary TEXT
    )""",
)

# The same tables in PostgreSQL: 64-bit floats (PostgreSQL's REAL is 32-bit), BYTEA, text
# compared byte-wise (COLLATE "C": sorted as SQLite sorts them), and a sequence that keeps the
# runs in the order they were first recorded (SQLite's rowid).
_F8 = "DOUBLE PRECISION"
_C = 'TEXT COLLATE "C"'
POSTGRES_SCHEMA = (
    f"CREATE TABLE meta (key {_C} PRIMARY KEY, value TEXT NOT NULL)",
    f"""CREATE TABLE subjects (
        subject {_C} PRIMARY KEY,
        budget_epsilon {_F8} NOT NULL CHECK (budget_epsilon >= 0),
        budget_delta {_F8} NOT NULL CHECK (budget_delta >= 0 AND budget_delta < 1),
        created_at {_F8} NOT NULL
    )""",
    f"""CREATE TABLE entries (
        id BIGINT PRIMARY KEY,
        kind TEXT NOT NULL CHECK (kind IN ('release', 'refusal', 'budget')),
        subject {_C} NOT NULL REFERENCES subjects(subject),
        mechanism TEXT NOT NULL,
        epsilon {_F8} NOT NULL CHECK (epsilon >= 0),
        delta {_F8} NOT NULL CHECK (delta >= 0 AND delta < 1),
        dp_event TEXT NOT NULL,
        run_id {_C} NOT NULL,
        note TEXT NOT NULL,
        seeded BIGINT NOT NULL,
        is_dp BIGINT NOT NULL,
        created_at {_F8} NOT NULL,
        prev_hash TEXT NOT NULL,
        hash TEXT NOT NULL
    )""",
    "CREATE INDEX entries_by_subject ON entries(subject, kind)",
    "CREATE INDEX entries_by_run ON entries(run_id)",
    f"""CREATE TABLE pseudonyms (
        subject {_C} NOT NULL REFERENCES subjects(subject),
        key {_C} NOT NULL,
        vector BYTEA NOT NULL,
        dtype TEXT NOT NULL,
        shape TEXT NOT NULL,
        entry_id BIGINT NOT NULL REFERENCES entries(id),
        created_at {_F8} NOT NULL,
        PRIMARY KEY (subject, key)
    )""",
    f"""CREATE TABLE face_units (
        unit {_C} PRIMARY KEY,
        photo {_C} NOT NULL,
        n BIGINT NOT NULL,
        x0 BIGINT NOT NULL, y0 BIGINT NOT NULL, x1 BIGINT NOT NULL, y1 BIGINT NOT NULL,
        created_at {_F8} NOT NULL,
        UNIQUE (photo, n)
    )""",
    f"""CREATE TABLE runs (
        seq BIGSERIAL NOT NULL,
        run_id {_C} PRIMARY KEY,
        started_at {_F8},
        finished_at {_F8},
        settings TEXT,
        summary TEXT
    )""",
)
LEDGER_TABLES = ("meta", "subjects", "entries", "pseudonyms", "face_units", "runs")
ENTRY_COLUMNS = (
    "id",
    "kind",
    "subject",
    "mechanism",
    "epsilon",
    "delta",
    "dp_event",
    "run_id",
    "note",
    "seeded",
    "is_dp",
    "created_at",
)
"""An entry's hashed fields, in hash order (the table adds prev_hash and hash)."""
# what a copy carries, table by table, in the order that keeps foreign keys satisfied
_COPY = (
    ("meta", ("key", "value"), "key"),
    ("subjects", ("subject", "budget_epsilon", "budget_delta", "created_at"), "subject"),
    (
        "entries",
        (
            *ENTRY_COLUMNS,
            "prev_hash",
            "hash",
        ),
        "id",
    ),
    (
        "pseudonyms",
        ("subject", "key", "vector", "dtype", "shape", "entry_id", "created_at"),
        "entry_id",
    ),
    ("face_units", ("unit", "photo", "n", "x0", "y0", "x1", "y1", "created_at"), "photo, n"),
    ("runs", ("run_id", "started_at", "finished_at", "settings", "summary"), None),
)
# meta rows only a PostgreSQL ledger has (SQLite keeps these ids in its file header)
_PG_ONLY_META = ("application_id", "user_version")

MetaRows = Callable[[], Sequence[tuple[str, str]]]
Snapshot = dict[str, list[tuple[Any, ...]]]


# ---------------------------------------------------------------- dpface SQLite files
def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not every platform can open a folder
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _read_only_uri(path: Path, *, immutable: bool) -> str:
    return path.resolve().as_uri() + ("?mode=ro&immutable=1" if immutable else "?mode=ro")


def _legacy_ledger_schema(path: Path) -> str | None:
    """The schema of a dpface ledger written before application ids (v1), if ``path`` is one.

    Read with ``immutable=1``: SQLite then creates no ``-wal``/``-shm`` files and takes no lock.
    """
    try:
        con = sqlite3.connect(_read_only_uri(path, immutable=True), uri=True)
        try:
            row = con.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
        finally:
            con.close()
    except sqlite3.DatabaseError:
        return None
    return None if row is None else str(row[0])


def _probe(
    path: Path,
    *,
    application_id: int,
    version: int,
    what: str,
    timeout: float,
    legacy: Callable[[Path], str | None] | None,
) -> None:
    """Raise NotALedgerError unless ``path`` is ``what``; writes nothing to a file that is not.

    The 100-byte SQLite header is read as plain bytes first; only a file whose header carries
    ``application_id`` is then opened by SQLite (read-only) to confirm it.
    """
    untouched = "dpface left it untouched"
    if not path.is_file():
        raise NotALedgerError(f"{path} is not a regular file; {what} was expected there")
    try:
        with path.open("rb") as fh:
            header = fh.read(100)
    except OSError as err:
        raise NotALedgerError(f"{path} cannot be read ({err}); {what} was expected") from err
    if not header:
        raise NotALedgerError(
            f"{path} is empty; {what} was expected there. {untouched}: remove it, or give a "
            "path that does not exist yet to create a new one"
        )
    if len(header) < 100 or not header.startswith(_SQLITE_MAGIC):
        raise NotALedgerError(f"{path} is not {what} (not an SQLite database); {untouched}")
    found = int.from_bytes(header[68:72], "big")
    if found != application_id:
        if found in _DPFACE_FILES:
            raise NotALedgerError(f"{path} is {_DPFACE_FILES[found]}, not {what}; {untouched}")
        old = legacy(path) if legacy is not None and found == 0 else None
        if old is not None:
            raise NotALedgerError(
                f"{path} is a dpface ledger of schema {old}; this dpface reads schema {version} "
                "and does not migrate old ledgers. Keep the old file for the record (the dpface "
                f"version that wrote it still reads it) and start a new ledger; {untouched}"
            )
        raise NotALedgerError(
            f"{path} is an SQLite database but not {what} (application_id {found:#x}, expected "
            f"{application_id:#x}); {untouched}"
        )
    try:
        con = sqlite3.connect(_read_only_uri(path, immutable=False), uri=True, timeout=timeout)
        try:
            got_id = int(con.execute("PRAGMA application_id").fetchone()[0])
            got_version = int(con.execute("PRAGMA user_version").fetchone()[0])
        finally:
            con.close()
    except sqlite3.DatabaseError as err:
        raise NotALedgerError(f"{path} cannot be read as {what}: {err}") from err
    _check_ids(path, got_id, got_version, application_id=application_id, version=version, what=what)


def _check_ids(
    path: Path, got_id: int, got_version: int, *, application_id: int, version: int, what: str
) -> None:
    if got_id != application_id:
        raise NotALedgerError(f"{path} is not {what} (application_id {got_id:#x})")
    if got_version != version:
        raise NotALedgerError(
            f"{path} is {what} of schema {got_version}; this dpface reads schema {version} and "
            "does not migrate: use the dpface version that wrote it, or start a new file"
        )


def _create_file(
    path: Path, *, application_id: int, version: int, init: Callable[[sqlite3.Connection], None]
) -> None:
    """Create a complete new file at ``path`` atomically (never a half-initialised one).

    It is built under a temporary name (owner-only permissions) in rollback-journal mode, so
    the header carries the application id and version before the file switches to WAL, and is
    then hard-linked into place.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.creating")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.close(fd)
    try:
        con = sqlite3.connect(tmp, isolation_level=None)
        try:
            con.execute("PRAGMA synchronous=FULL")
            con.execute("BEGIN IMMEDIATE")
            init(con)
            con.execute(f"PRAGMA application_id={int(application_id)}")
            con.execute(f"PRAGMA user_version={int(version)}")
            con.execute("COMMIT")
            con.execute("PRAGMA journal_mode=WAL")
        finally:
            con.close()
        # if another process created ``path`` meanwhile, theirs is kept
        _link_into_place(tmp, path)
    finally:
        _remove_with_journals(tmp)


def _link_into_place(tmp: Path, path: Path) -> bool:
    """Give the complete file ``tmp`` the name ``path`` unless that exists; False if it did."""
    try:
        os.link(tmp, path)
    except FileExistsError:
        return False
    except OSError as err:  # a file system without hard links
        if err.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
            raise
        if os.path.lexists(path):
            return False
        os.replace(tmp, path)
    _fsync_dir(path.parent)
    return True


def _remove_with_journals(path: Path) -> None:
    for leftover in (path, *(Path(f"{path}{s}") for s in ("-wal", "-shm", "-journal"))):
        leftover.unlink(missing_ok=True)


def _open_file(
    path: str | Path,
    *,
    application_id: int,
    version: int,
    what: str,
    create: bool,
    timeout: float,
    init: Callable[[sqlite3.Connection], None],
    legacy: Callable[[Path], str | None] | None = None,
) -> tuple[Path, sqlite3.Connection]:
    """Open (or create) a dpface SQLite file; refuse, untouched, anything else."""
    if str(path) == ":memory:":
        con = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
        con.execute("BEGIN IMMEDIATE")
        init(con)
        con.execute(f"PRAGMA application_id={int(application_id)}")
        con.execute(f"PRAGMA user_version={int(version)}")
        con.execute("COMMIT")
        con.execute("PRAGMA foreign_keys=ON")
        return Path(":memory:"), con
    p = Path(path).expanduser()
    if not os.path.lexists(p):
        if not create:
            raise FileNotFoundError(
                errno.ENOENT, f"there is no {what} at {p} (create=False)", str(p)
            )
        _create_file(p, application_id=application_id, version=version, init=init)
    _probe(
        p, application_id=application_id, version=version, what=what, timeout=timeout, legacy=legacy
    )
    con = sqlite3.connect(p, timeout=timeout, isolation_level=None, check_same_thread=False)
    try:
        # the same checks through the connection that will write (the file may have been
        # replaced since the probe); reading these pragmas writes nothing
        got_id = int(con.execute("PRAGMA application_id").fetchone()[0])
        got_version = int(con.execute("PRAGMA user_version").fetchone()[0])
        _check_ids(
            p, got_id, got_version, application_id=application_id, version=version, what=what
        )
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("PRAGMA synchronous=FULL")
        con.execute("PRAGMA foreign_keys=ON")
    except BaseException:
        con.close()
        raise
    return p, con


def _write_new_file(target: Path, fill: Callable[[sqlite3.Connection], None]) -> Path:
    """Write a complete new SQLite file at ``target`` via ``fill``; never overwrite or leave a
    partial file (built under a temporary name, checkpointed, then linked into place)."""
    if os.path.lexists(target):
        raise FileExistsError(errno.EEXIST, "the backup target already exists", str(target))
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.backup")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.close(fd)
    try:
        copy = sqlite3.connect(tmp, isolation_level=None)
        try:
            fill(copy)
            copy.execute("PRAGMA journal_mode=WAL")
            copy.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            copy.close()
        if not _link_into_place(tmp, target):
            raise FileExistsError(errno.EEXIST, "the backup target already exists", str(target))
    finally:
        _remove_with_journals(tmp)
    return target


# ====================================================================== the backends
class Backend:
    """One database connection of a ledger; every call is made under the ledger's own lock.

    SQL is written once, SQLite style (``?`` placeholders); a backend translates it.
    """

    dialect: str
    where: Path | str  # what the ledger shows as its location (no password)
    runs_order: str  # the column that orders runs oldest first

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        raise NotImplementedError

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        raise NotImplementedError

    def begin_write(self) -> None:
        """Start a write transaction."""
        raise NotImplementedError

    def begin_read(self) -> None:
        """Start a read-only transaction: one consistent snapshot."""
        raise NotImplementedError

    def commit(self) -> None:
        raise NotImplementedError

    def rollback(self) -> None:
        raise NotImplementedError

    def lock_unit(self, name: str) -> None:
        """Inside a write transaction: exclude every other writer deciding about ``name``."""

    def chain_tip(self) -> tuple[str | None, tuple[int, str] | None]:
        """Inside a write transaction: lock the chain head against every other writer appending
        to it, and read it: (the head row's value, (id, hash) of the last entry) -- None each
        when missing."""
        head = self.execute("SELECT value FROM meta WHERE key='head'").fetchone()
        last = self.execute("SELECT id, hash FROM entries ORDER BY id DESC LIMIT 1").fetchone()
        return (
            None if head is None else str(head[0]),
            None if last is None else (int(last[0]), str(last[1])),
        )

    def write_entry(self, columns: Sequence[str], values: Sequence[Any], head: str) -> None:
        """Inside a write transaction, after :meth:`chain_tip`: insert the entry, move the
        head."""
        self.execute(
            f"INSERT INTO entries({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})",
            values,
        )
        self.execute("UPDATE meta SET value=? WHERE key='head'", (head,))

    def check_text(self, value: str, what: str) -> None:
        """Refuse (UsageError) a string this database cannot store as it is."""

    def close(self) -> None:
        raise NotImplementedError

    def backup(self, target: Path) -> Path:
        """A complete, self-contained SQLite ledger at ``target`` (never overwritten)."""
        raise NotImplementedError

    def snapshot(self) -> Snapshot:
        """Every row of the ledger as of one snapshot, table by table in the order that keeps
        foreign keys satisfied (runs oldest first; meta without PostgreSQL's own ids)."""
        out: Snapshot = {}
        self.begin_read()
        try:
            for table, cols, order in _COPY:
                rows = self.execute(
                    f"SELECT {', '.join(cols)} FROM {table} "
                    f"ORDER BY {self.runs_order if order is None else order}"
                ).fetchall()
                out[table] = [
                    tuple(bytes(v) if isinstance(v, memoryview) else v for v in r)
                    for r in rows
                    if table != "meta" or r[0] not in _PG_ONLY_META
                ]
        finally:
            self.commit()
        return out

    @property
    def raw(self) -> Any:
        raise NotImplementedError


def _init_sqlite(meta: MetaRows) -> Callable[[sqlite3.Connection], None]:
    def init(con: sqlite3.Connection) -> None:
        for stmt in SQLITE_SCHEMA:
            con.execute(stmt)
        con.executemany("INSERT INTO meta(key, value) VALUES (?, ?)", list(meta()))

    return init


class SQLiteBackend(Backend):
    """A ledger file (or ``":memory:"``); a write transaction holds the database's write lock."""

    dialect = "sqlite"
    runs_order = "rowid"

    def __init__(self, path: str | Path, *, create: bool, timeout: float, meta: MetaRows) -> None:
        self.where, self._con = _open_file(
            path,
            application_id=APPLICATION_ID,
            version=SCHEMA_VERSION,
            what="a dpface ledger",
            create=create,
            timeout=timeout,
            init=_init_sqlite(meta),
            legacy=_legacy_ledger_schema,
        )

    @property
    def raw(self) -> sqlite3.Connection:
        return self._con

    def execute(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Cursor:
        return self._con.execute(sql, params)

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        self._con.executemany(sql, rows)

    def begin_write(self) -> None:
        self._con.execute("BEGIN IMMEDIATE")  # the write lock: writers are serialised

    def begin_read(self) -> None:
        self._con.execute("BEGIN")

    def commit(self) -> None:
        self._con.execute("COMMIT")

    def rollback(self) -> None:
        self._con.execute("ROLLBACK")

    def close(self) -> None:
        """Checkpoint the WAL into the main file (so it alone holds everything) and close."""
        try:
            if str(self.where) != ":memory:":
                with contextlib.suppress(sqlite3.Error):
                    self._con.execute("PRAGMA busy_timeout=5000")
                    self._con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            self._con.close()

    def backup(self, target: Path) -> Path:
        return _write_new_file(target, self._con.backup)


# ---------------------------------------------------------------- PostgreSQL
def postgres_url(location: object) -> str | None:
    """The PostgreSQL URL ``location`` names, or None when it names a file.

    A ``str`` is a URL when it starts with ``postgresql://`` or ``postgres://``. A ``Path`` made
    from such a URL has lost one slash (``postgresql:/host/db``) and is read back as the URL, so
    a URL survives code that turns every location into a ``Path`` -- write the host (a
    percent-encoded socket folder such as ``%2Fvar%2Frun%2Fpostgresql`` is a host), since
    ``postgresql:///db`` cannot be told from ``postgresql://db`` once a slash is gone.
    """
    if isinstance(location, PurePath):
        text = str(location)
        for scheme in POSTGRES_SCHEMES:
            if text.startswith(f"{scheme}:/") and not text.startswith(f"{scheme}://"):
                return f"{scheme}://{text[len(scheme) + 2 :]}"
        return None
    if isinstance(location, str):
        if location.startswith(tuple(f"{s}://" for s in POSTGRES_SCHEMES)):
            return location
    return None


# passwords of the URLs opened in this process, by the location shown (which has none), so
# ``Ledger(ledger.path)`` reopens a ledger whose password was given in its URL
_PASSWORDS: dict[str, str] = {}


def _import_psycopg() -> Any:
    try:
        import psycopg
    except ImportError as err:  # pragma: no cover - depends on the installation
        raise LedgerError(
            "a PostgreSQL ledger needs psycopg 3: pip install 'dpface[postgres]'"
        ) from err
    return psycopg


def _display_url(params: dict[str, Any], info: Any) -> str:
    """``postgresql://user@host:port/dbname?...`` of a live connection, without its password."""
    host = str(info.host or "localhost")
    user = urllib.parse.quote(str(info.user), safe="")
    extra = {
        k: str(v)
        for k, v in sorted(params.items())
        if k not in ("user", "password", "host", "hostaddr", "port", "dbname") and v is not None
    }
    query = f"?{urllib.parse.urlencode(extra)}" if extra else ""
    return (
        f"postgresql://{user}@{urllib.parse.quote(host, safe='')}:{info.port}/"
        f"{urllib.parse.quote(str(info.dbname), safe='')}{query}"
    )


class PostgresBackend(Backend):
    """A ledger in one schema of a PostgreSQL database (see the module's docstring)."""

    dialect = "postgresql"
    runs_order = "seq"

    def __init__(
        self,
        url: str,
        *,
        create: bool,
        timeout: float,
        meta: MetaRows,
        copy: Snapshot | None = None,
    ) -> None:
        """``copy``: make the ledger from these rows (:meth:`Backend.snapshot` of another one);
        the schema must then be empty (``FileExistsError`` otherwise)."""
        psycopg = _import_psycopg()
        from psycopg.conninfo import conninfo_to_dict

        self._errors = psycopg.Error
        self._operational = psycopg.OperationalError
        self._lock_timeout = psycopg.errors.LockNotAvailable
        try:
            params = conninfo_to_dict(url)
        except psycopg.ProgrammingError as err:
            raise UsageError(f"not a usable PostgreSQL URL ({err})") from None
        if "password" not in params and url in _PASSWORDS:
            params["password"] = _PASSWORDS[url]
        connect_timeout = max(2, round(timeout))
        try:
            self._con = psycopg.connect(autocommit=True, connect_timeout=connect_timeout, **params)
        except psycopg.OperationalError as err:
            safe = _display_url({k: v for k, v in params.items() if k != "password"}, _Info(params))
            raise LedgerError(f"cannot connect to the PostgreSQL ledger {safe}: {err}") from None
        self._sql: dict[str, str] = {}
        try:
            self.where = _display_url(params, self._con.info)
            if params.get("password"):
                _PASSWORDS[self.where] = str(params["password"])
            # a writer waits for another's locks at most ``timeout`` (as SQLite's busy timeout)
            self._con.execute(f"SET lock_timeout = {max(1, round(timeout * 1000))}")
            self._open(create=create, meta=meta, copy=copy)
        except BaseException:
            self._con.close()
            raise

    @property
    def raw(self) -> Any:
        return self._con

    # -------------------------------------------------------------- SQL
    def _translate(self, sql: str) -> str:
        out = self._sql.get(sql)
        if out is None:
            if "%" in sql:
                raise ValueError("ledger SQL must not contain '%'")
            out = self._sql[sql] = sql.replace("?", "%s")
        return out

    @contextlib.contextmanager
    def _talking(self, committing: bool = False) -> Iterator[None]:
        """The server's operational failures (connection lost, a lock not granted in time) as
        LedgerError, saying what became of the transaction."""
        try:
            yield
        except self._operational as err:
            if isinstance(err, self._lock_timeout):
                raise LedgerError(
                    f"the PostgreSQL ledger {self.where}: a lock was not granted within the "
                    f"timeout ({err}); nothing of this transaction was recorded"
                ) from err
            fate = (
                "the commit may or may not have reached the server: look with events() or "
                "verify() on a new connection"
                if committing
                else "nothing of this transaction was recorded"
            )
            raise LedgerError(
                f"lost the PostgreSQL ledger {self.where} ({err}); {fate}. Open the ledger again "
                "to go on"
            ) from err

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        with self._talking():
            return self._con.execute(self._translate(sql), _pg_params(params) or None)

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        with self._talking(), self._con.cursor() as cur:
            cur.executemany(self._translate(sql), [_pg_params(r) for r in rows])

    def begin_write(self) -> None:
        with self._talking():
            self._con.execute("BEGIN ISOLATION LEVEL READ COMMITTED")

    def begin_read(self) -> None:
        with self._talking():
            self._con.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")

    def commit(self) -> None:
        with self._talking(committing=True):
            self._con.execute("COMMIT")

    def rollback(self) -> None:
        if self._con.closed:
            return
        self._con.execute("ROLLBACK")

    def lock_unit(self, name: str) -> None:
        with self._talking():
            self._con.execute(
                "SELECT pg_advisory_xact_lock(%s::int4, hashtext(%s))", (_LOCK_UNIT, name)
            )

    def chain_tip(self) -> tuple[str | None, tuple[int, str] | None]:
        # the head row locked FOR UPDATE (READ COMMITTED hands back its latest committed value
        # once the lock is granted); the last entry is read by the NEXT statement, whose
        # snapshot is taken after the lock was granted and so sees every committed entry
        # (both sent in one round trip: the server runs them in order)
        with self._talking(), self._con.pipeline():
            locked = self._con.execute("SELECT value FROM meta WHERE key='head' FOR UPDATE")
            tip = self._con.execute("SELECT id, hash FROM entries ORDER BY id DESC LIMIT 1")
        with self._talking():
            head, last = locked.fetchone(), tip.fetchone()
        return (
            None if head is None else str(head[0]),
            None if last is None else (int(last[0]), str(last[1])),
        )

    def write_entry(self, columns: Sequence[str], values: Sequence[Any], head: str) -> None:
        # one round trip: the entry and the new head in one statement
        self.execute(
            f"WITH added AS (INSERT INTO entries({', '.join(columns)}) "
            f"VALUES ({', '.join('?' * len(columns))}) RETURNING id) "
            "UPDATE meta SET value=? WHERE key='head' AND EXISTS (SELECT 1 FROM added)",
            (*values, head),
        )

    def check_text(self, value: str, what: str) -> None:
        if "\x00" in value:
            raise UsageError(f"{what} must not contain a NUL character (PostgreSQL text)")

    def close(self) -> None:
        self._con.close()

    # -------------------------------------------------------------- opening
    def _tables(self) -> set[str]:
        rows = self._con.execute(
            "SELECT c.relname FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n "
            "ON n.oid = c.relnamespace WHERE n.nspname = current_schema() "
            "AND c.relkind IN ('r', 'p', 'v', 'm', 'f')"
        ).fetchall()
        return {str(r[0]) for r in rows}

    def _open(self, *, create: bool, meta: MetaRows, copy: Snapshot | None = None) -> None:
        row = self._con.execute("SELECT current_schema()").fetchone()
        if row is None or row[0] is None:
            raise LedgerError(
                f"{self.where}: the connection's search_path names no existing schema; create "
                "it first (CREATE SCHEMA ...) or give another one with "
                "?options=-csearch_path%3DNAME"
            )
        self.schema = str(row[0])
        here = f"schema {self.schema!r} of {self.where}"
        if copy is not None:
            if self._tables() or not self._create(meta, copy):
                raise FileExistsError(
                    errno.EEXIST,
                    f"{here} is not empty: a copy goes into an empty schema",
                    self.where,
                )
        elif not self._tables():
            if not create:
                raise FileNotFoundError(
                    errno.ENOENT,
                    f"there is no dpface ledger in {here} (create=False)",
                    self.where,
                )
            self._create(meta)
        tables = self._tables()
        untouched = "dpface left it untouched"
        if "meta" not in tables:
            shown = ", ".join(sorted(tables)[:6])
            raise NotALedgerError(
                f"{here} holds other tables ({shown}) and no dpface ledger; {untouched}. Give "
                "an empty schema (?options=-csearch_path%3DNAME) or another database"
            )
        try:
            self.begin_read()
            try:
                ids = dict(
                    self._con.execute(
                        "SELECT key, value FROM meta "
                        "WHERE key IN ('application_id', 'user_version')"
                    ).fetchall()
                )
            finally:
                self.rollback()
        except self._errors as err:
            raise NotALedgerError(f"{here} is not a dpface ledger ({err}); {untouched}") from None
        if ids.get("application_id") != str(APPLICATION_ID):
            raise NotALedgerError(
                f"{here} has a table 'meta' but is not a dpface ledger; {untouched}"
            )
        if ids.get("user_version") != str(SCHEMA_VERSION):
            raise NotALedgerError(
                f"{here} is a dpface ledger of schema {ids.get('user_version')}; this dpface "
                f"reads schema {SCHEMA_VERSION} and does not migrate: use the dpface version "
                "that wrote it, or start a new ledger"
            )
        missing = sorted(set(LEDGER_TABLES) - tables)
        if missing:
            raise NotALedgerError(
                f"{here} is a damaged dpface ledger: the tables {', '.join(missing)} are "
                f"missing; {untouched}"
            )

    def _create(self, meta: MetaRows, copy: Snapshot | None = None) -> bool:
        """Create every table and the meta rows -- or every row of ``copy`` -- in ONE
        transaction (DDL is transactional in PostgreSQL): concurrent creators wait on an
        advisory lock and the later ones find the ledger made; nobody ever sees half of one.
        False when another process made it first."""
        self.begin_write()
        try:
            self._con.execute(
                "SELECT pg_advisory_xact_lock(%s::int4, hashtext(current_schema()))",
                (_LOCK_CREATE,),
            )
            made = not self._tables()
            if made:
                for stmt in POSTGRES_SCHEMA:
                    self._con.execute(stmt)
                ids = [
                    ("application_id", str(APPLICATION_ID)),
                    ("user_version", str(SCHEMA_VERSION)),
                ]
                if copy is None:
                    self.executemany("INSERT INTO meta(key, value) VALUES (?, ?)", [*meta(), *ids])
                else:
                    for table, cols, _ in _COPY:
                        rows = [*copy[table], *ids] if table == "meta" else copy[table]
                        if rows:
                            self.executemany(
                                f"INSERT INTO {table}({', '.join(cols)}) "
                                f"VALUES ({', '.join('?' * len(cols))})",
                                rows,
                            )
        except BaseException:
            self.rollback()
            raise
        self.commit()
        return made

    # -------------------------------------------------------------- copies
    def backup(self, target: Path) -> Path:
        """The ledger as of one snapshot, written as a self-contained SQLite ledger file."""

        def fill(copy: sqlite3.Connection) -> None:
            copy.execute("PRAGMA synchronous=FULL")
            copy.execute("BEGIN IMMEDIATE")
            for stmt in SQLITE_SCHEMA:
                copy.execute(stmt)
            self.begin_read()
            try:
                for table, cols, order in _COPY:
                    by = "seq" if order is None else order
                    rows = self._con.execute(
                        f"SELECT {', '.join(cols)} FROM {table} ORDER BY {by}"
                    ).fetchall()
                    if table == "meta":
                        rows = [r for r in rows if r[0] not in _PG_ONLY_META]
                    copy.executemany(
                        f"INSERT INTO {table}({', '.join(cols)}) "
                        f"VALUES ({', '.join('?' * len(cols))})",
                        [
                            tuple(bytes(v) if isinstance(v, memoryview) else v for v in r)
                            for r in rows
                        ],
                    )
            finally:
                self.rollback()
            copy.execute(f"PRAGMA application_id={APPLICATION_ID}")
            copy.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            copy.execute("COMMIT")

        return _write_new_file(target, fill)


class _Info:
    """Connection parameters shaped like psycopg's ConnectionInfo (for an error message)."""

    def __init__(self, params: dict[str, Any]) -> None:
        self.host = params.get("host")
        self.port = params.get("port", 5432)
        self.user = params.get("user", "")
        self.dbname = params.get("dbname", "")


def _pg_params(params: Sequence[Any]) -> tuple[Any, ...]:
    # bools are stored as 0/1 integers, as in SQLite
    return tuple(int(v) if isinstance(v, bool) else v for v in params)


def open_backend(location: str | Path, *, create: bool, timeout: float, meta: MetaRows) -> Backend:
    """The backend for ``location``: a PostgreSQL URL, else an SQLite file or ``":memory:"``."""
    url = postgres_url(location)
    if url is not None:
        return PostgresBackend(url, create=create, timeout=timeout, meta=meta)
    return SQLiteBackend(location, create=create, timeout=timeout, meta=meta)
