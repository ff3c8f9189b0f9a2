"""The `zapbilling` command: serve, and manage API keys.

    zapbilling serve [--db PATH] [--host HOST] [--port PORT] [--durability full|normal] [--workers N]
    zapbilling keys create [--db PATH] --org NAME --mode test|live [--scope admin|read]
    zapbilling keys list [--db PATH]
    zapbilling keys revoke KEY_ID [--db PATH]
    zapbilling gen client [--out DIR] [--schema FILE] [--check]
    zapbilling gen openapi [--out FILE] [--schema FILE] [--check]
    zapbilling gen docs [--out FILE] [--schema FILE] [--check]
    zapbilling export KIND [--db URL] --org NAME --mode test|live [--since TIME] [--format jsonl|csv]
    zapbilling copy --from PATH --to postgresql://user:password@host:port/dbname

Every flag of `serve` (and --db everywhere) defaults to its ZAPBILLING_* environment variable.
Errors are one line on stderr and a non-zero exit status.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import sqlite3
import sys
from typing import Any, NoReturn, Sequence

from . import backup, copy as copy_db, export
from .config import DURABILITY, LOG_FORMATS, LOG_LEVELS, Config, env_default
from .limits import Limits, env_name, flag_name, limit_fields
from .store import Unavailable, describe, make_store
from .times import format_ts, system_clock

class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def _port(text: str) -> int:
    if not text.isdigit() or not 0 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"invalid port {text!r}: expected 0-65535")
    return int(text)


def _workers(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 64:
        raise argparse.ArgumentTypeError(f"invalid worker count {text!r}: expected 1-64")
    return int(text)


def _limit_value(kind: type) -> Any:
    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid number {text!r}") from None
        if value < 0:
            raise argparse.ArgumentTypeError(f"must not be negative: {text!r}")
        return value  # type: ignore[no-any-return]

    return parse


def _name(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return text


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="zapbilling", description="Usage-based billing service.")
    sub = p.add_subparsers(dest="command", required=True, metavar="{serve,keys,migrate,export,backup,copy,gen}")
    db: dict[str, Any] = {"default": env_default("db"), "metavar": "DB",
                          "help": "a SQLite file (a path or sqlite:///path) or postgresql://user:password@host:port/dbname (env ZAPBILLING_DB)"}

    serve = sub.add_parser("serve", help="run the HTTP server")
    serve.add_argument("--db", **db)
    serve.add_argument("--host", default=env_default("host"), help="interface to listen on (env ZAPBILLING_HOST)")
    serve.add_argument("--port", type=_port, default=env_default("port"), help="TCP port (env ZAPBILLING_PORT)")
    serve.add_argument("--durability", choices=DURABILITY, default=env_default("durability"),
                       help="full: commits survive a power cut; normal: a process crash only (env ZAPBILLING_DURABILITY)")
    serve.add_argument("--workers", type=_workers, default=env_default("workers"),
                       help="server processes sharing the port and the database (env ZAPBILLING_WORKERS)")
    serve.add_argument("--log-format", choices=LOG_FORMATS, default=env_default("log_format"),
                       help="text lines, or one JSON object per line (default text; env ZAPBILLING_LOG_FORMAT)")
    serve.add_argument("--log-level", choices=LOG_LEVELS, default=env_default("log_level"),
                       help="the least severe records logged; above info, no access lines (default info; env ZAPBILLING_LOG_LEVEL)")
    for f in limit_fields():
        serve.add_argument(flag_name(f), dest=f"limit_{f.name}", type=_limit_value(type(f.default)), metavar="N",
                           default=os.environ.get(env_name(f), str(f.default)),
                           help=f"{f.metadata['help']} (default {f.default}; env {env_name(f)})")

    keys = sub.add_parser("keys", help="manage API keys").add_subparsers(dest="action", required=True, metavar="{create,list,revoke}")
    create = keys.add_parser("create", help="make a key and print it alone on stdout")
    create.add_argument("--db", **db)
    create.add_argument("--org", required=True, type=_name)
    create.add_argument("--mode", required=True, choices=("test", "live"))
    create.add_argument("--scope", default="admin", choices=("admin", "read"))
    lister = keys.add_parser("list", help="list keys (never the keys themselves)")
    lister.add_argument("--db", **db)
    revoke = keys.add_parser("revoke", help="refuse a key from the next request on")
    revoke.add_argument("key_id")
    revoke.add_argument("--db", **db)

    gen = sub.add_parser("gen", help="write what the schema generates").add_subparsers(dest="target", required=True, metavar="{client,openapi,docs}")
    for target, out, what in (("client", "clients/python", "the Python client package into DIR"),
                              ("openapi", "openapi.json", "the OpenAPI 3.1 document to FILE (- for stdout)"),
                              ("docs", "docs/api.md", "the API reference to FILE (- for stdout), running each example on a scratch database")):
        g = gen.add_parser(target, help=f"write {what}")
        g.add_argument("--out", default=out, help=f"default {out}")
        g.add_argument("--schema", help="the .zap file (default: the packaged schemas/billing.zap)")
        g.add_argument("--check", action="store_true", help="write nothing; exit 1 if what is there is stale")
    export.add_parser(sub, env_default("db"))
    backup.add_parser(sub, env_default("db"))
    copy_db.add_parser(sub)
    migrate = sub.add_parser("migrate", help="bring the database's schema up to date, and do nothing else")
    migrate.add_argument("--db", **db)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "serve":
        if args.durability not in DURABILITY:
            _fail(f"invalid durability {args.durability!r}: expected full or normal")
        limits = Limits(**{f.name: getattr(args, f"limit_{f.name}") for f in limit_fields()})  # parsed by argparse, env defaults too
        try:
            config = Config(db=args.db, host=args.host, port=int(args.port), durability=args.durability,
                            workers=int(args.workers), log_format=args.log_format, log_level=args.log_level, limits=limits)
        except ValueError as exc:  # settings that do not fit together (Config.__post_init__)
            _fail(str(exc))
        return serve(config)
    if args.command == "gen":
        return generate(args)
    if args.command == "export":
        return export.run(args)
    if args.command == "backup":
        return backup.run(args)
    if args.command == "copy":
        return copy_db.run(args)
    try:
        return asyncio.run(_migrate(args) if args.command == "migrate" else _keys(args))
    except Unavailable as exc:
        _fail(str(exc))
    except (OSError, sqlite3.Error, ValueError) as exc:
        _fail(f"cannot use database {describe(args.db)}: {exc}")


def _fail(message: str) -> NoReturn:
    sys.stderr.write(f"zapbilling: error: {message}\n")
    raise SystemExit(2)


def serve(config: Config) -> int:
    from . import server

    try:
        return server.serve(config)
    except Unavailable as exc:
        _fail(str(exc))
    except OSError as exc:  # the port is taken, or the database's folder does not exist
        _fail(f"cannot serve on {config.host}:{config.port} with database {describe(config.db)}: {exc}")
    except (sqlite3.Error, ValueError) as exc:
        _fail(f"cannot use database {describe(config.db)}: {exc}")


def generate(args: Any) -> int:
    from pathlib import Path

    from .codegen import generated_files, stale_files, write_files
    from .schema import SchemaError

    try:
        if args.target == "docs":
            files = {"api.md": _docs(Path(args.schema) if args.schema else None)}
        else:
            files = generated_files(args.target, Path(args.schema) if args.schema else None)
    except (OSError, SchemaError) as exc:
        _fail(f"cannot read the schema: {exc}")
    out = Path(args.out)
    if args.target in ("openapi", "docs"):
        (only,) = files.values()
        if args.out == "-":
            sys.stdout.write(only)
            return 0
        out, files = out.parent, {out.name: only}
    if args.check:
        if stale := stale_files(files, out):
            sys.stderr.write(f"zapbilling: {out} is stale ({', '.join(stale)}): run `zapbilling gen {args.target} --out {args.out}`\n")
            return 1
        sys.stderr.write(f"{args.out} is up to date\n")
        return 0
    write_files(files, out)
    sys.stderr.write(f"wrote {args.out}\n")
    return 0


def _docs(schema_path: Any) -> str:
    """docs/api.md's text; an example that does not run is a one-line error, not a traceback."""
    from .codegen.docs import generate
    from .codegen.docs_examples import ExampleError
    from .registry import RegistryError, default_schema_path, load_registry

    path = schema_path or default_schema_path()
    try:
        return generate(load_registry(path), path, f"schemas/{path.name}")
    except (ExampleError, RegistryError) as exc:
        _fail(f"cannot generate the API reference: {exc}")


async def _migrate(args: Any) -> int:
    """Opening a store migrates it (servers do so at start-up too: several at once apply each
    version once); this command lets an operator do it alone, ahead of a deploy."""
    from .store.migrations import scripts

    store = make_store(args.db)
    await store.open()
    await store.close()
    sys.stderr.write(f"{describe(args.db)} is at schema version {len(scripts())}\n")
    return 0


async def _keys(args: Any) -> int:
    store = make_store(args.db)
    await store.open()
    try:
        if args.action == "create":
            key_id, secret = await store.create_key(args.org, args.mode, args.scope, system_clock())
            sys.stderr.write(f"created {key_id} for {args.org} ({args.mode}, {args.scope})\n")
            print(secret)
        elif args.action == "list":
            for k in await store.list_keys():
                state = f"revoked {format_ts(k.revoked_at)}" if k.revoked_at else "active"
                print(f"{k.id}\t{k.org}\t{k.mode}\t{k.scope}\t{k.hint}...\tcreated {format_ts(k.created_at)}\t{state}")
        elif not await store.revoke_key(args.key_id, system_clock()):
            _fail(f"no such key: {args.key_id}")
        else:
            sys.stderr.write(f"revoked {args.key_id}\n")
    finally:
        await store.close()
    return 0
