"""What `--db` names: a SQLite file (a path, or `sqlite:///path`) or a PostgreSQL database (a
`postgresql://user:password@host:port/dbname` URL). No driver is loaded here."""
from __future__ import annotations

from urllib.parse import urlsplit


def is_postgres(db: str) -> bool:
    return db.startswith(("postgresql://", "postgres://"))


def sqlite_path(url: str) -> str:
    """The SQLite file of a --db value: a plain path, or sqlite:///path (sqlite:////abs/path
    for an absolute one, as SQLAlchemy writes it). ValueError for anything else."""
    if url.startswith("sqlite:///"):
        path = url[len("sqlite:///"):]
        if not path:
            raise ValueError(f"{url!r} names no file: expected sqlite:///path")
        return path
    if "://" in url:
        scheme = url.split("://", 1)[0]
        raise ValueError(f"unsupported database {scheme}://...: expected a SQLite file (a path or sqlite:///path) or a postgresql:// URL")
    if not url:
        raise ValueError("--db is empty")
    return url


def describe(db: str) -> str:
    """`--db` as logs and messages may show it: a URL without its password."""
    if not is_postgres(db):
        try:
            return sqlite_path(db)
        except ValueError:
            return db
    try:
        parts = urlsplit(db)
        host = parts.hostname or "localhost"
        where = f"{host}:{parts.port}" if parts.port else host
    except ValueError:  # a malformed port: show no more than the scheme
        return "postgresql://(malformed URL)"
    user = f"{parts.username}@" if parts.username else ""
    return f"postgresql://{user}{where}{parts.path}"
