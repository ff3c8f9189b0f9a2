"""The `zapbilling` command: serve, and manage API keys.

    zapbilling serve [--db PATH] [--host HOST] [--port PORT] [--durability full|normal] [--workers N]
    zapbilling keys create [--db PATH] --org NAME --mode test|live [--scope admin|read] [--create-db]
    zapbilling keys list [--db PATH]
    zapbilling keys revoke KEY_ID [--db PATH]
    zapbilling gen client [--out DIR] [--schema FILE] [--check]
    zapbilling gen openapi [--out FILE] [--schema FILE] [--check]
    zapbilling gen docs [--out FILE] [--schema FILE] [--check]
    zapbilling export KIND [--db URL] --org NAME --mode test|live [--since TIME] [--format jsonl|csv]
    zapbilling copy --from PATH --to postgresql://user:password@host:port/dbname

Every flag of `serve` (and --db everywhere) defaults to its ZAPBILLING_* environment variable;
each option's help names its default and its variable (a test walks the parser to check).
Errors are one line on stderr and a non-zero exit status. `zapbilling` alone (or `zapbilling
keys`, `zapbilling gen`) prints its usage on stdout and exits 2; `zapbilling --version` prints
`zapbilling <version>`.

The key commands guard against the trap of the default database: run from another folder,
`zapbilling.db` is another file, and a key made there gets 401 from the running server. So
`keys create` does not create the default database unless asked (`--create-db`) and refuses
it with a message naming its absolute path; a database named on purpose (`--db PATH` or
ZAPBILLING_DB) is created if missing, as scripts that set up a fresh machine expect (`keys
create --db PATH` before the first `serve`). `keys list` and `keys revoke` never create one.
Every key command says on stderr which database it used, and whether it was new (a
PostgreSQL URL without its password; the database must exist).
"""
from __future__ import annotations

import argparse
import asyncio
import errno
import os
import sqlite3
import sys
from typing import Any, NoReturn, Sequence

from . import backup, copy as copy_db, export
from .config import DURABILITY, ENV, LOG_FORMATS, LOG_LEVELS, Config, env_default
from .limits import Limits, env_name, flag_name, limit_fields
from .store import Unavailable, describe, is_postgres, make_store, sqlite_path
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


_SWITCH = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False, "off": False}


def _limit_value(kind: type) -> Any:
    def parse(text: str) -> int | float:
        if kind is bool:  # a switch: `--flag` alone (its const), or its environment variable's text
            if text.lower() not in _SWITCH:
                raise argparse.ArgumentTypeError(f"expected true or false, not {text!r}")
            return _SWITCH[text.lower()]
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


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("zapbilling")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "(not installed)"


def _defaults(default: object, env: str | None = None) -> str:
    """The end of an option's help: its built-in default and its environment variable."""
    return f"(default {default}; env {env})" if env else f"(default {default})"


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="zapbilling", description="Usage-based billing service.")
    p.add_argument("--version", action="version", version=f"zapbilling {_version()}")
    p.set_defaults(usage=p)  # `zapbilling` alone: main prints this parser's help
    sub = p.add_subparsers(dest="command", metavar="{serve,keys,migrate,export,backup,copy,gen}")
    db: dict[str, Any] = {"default": env_default("db"), "metavar": "DB",
                          "help": "a SQLite file (a path or sqlite:///path) or postgresql://user:password@host:port/dbname "
                                  + _defaults(Config.db, ENV["db"])}

    serve = sub.add_parser("serve", help="run the HTTP server")
    serve.add_argument("--db", **db)
    serve.add_argument("--host", default=env_default("host"), help=f"interface to listen on {_defaults(Config.host, ENV['host'])}")
    serve.add_argument("--port", type=_port, default=env_default("port"), help=f"TCP port; 0 picks a free one {_defaults(Config.port, ENV['port'])}")
    serve.add_argument("--durability", choices=DURABILITY, default=env_default("durability"),
                       help=f"full: commits survive a power cut; normal: a process crash only {_defaults(Config.durability, ENV['durability'])}")
    serve.add_argument("--workers", type=_workers, default=env_default("workers"),
                       help=f"server processes sharing the port and the database {_defaults(Config.workers, ENV['workers'])}")
    serve.add_argument("--log-format", choices=LOG_FORMATS, default=env_default("log_format"),
                       help=f"text lines, or one JSON object per line {_defaults(Config.log_format, ENV['log_format'])}")
    serve.add_argument("--log-level", choices=LOG_LEVELS, default=env_default("log_level"),
                       help=f"the least severe records logged; above info, no access lines {_defaults(Config.log_level, ENV['log_level'])}")
    for f in limit_fields():
        switch: dict[str, Any] = {"nargs": "?", "const": "true", "metavar": "BOOL"} if isinstance(f.default, bool) else {"metavar": "N"}
        serve.add_argument(flag_name(f), dest=f"limit_{f.name}", type=_limit_value(type(f.default)), **switch,
                           default=os.environ.get(env_name(f), str(f.default)),
                           help=f"{f.metadata['help']} (default {f.default}; env {env_name(f)})")

    keys_parser = sub.add_parser("keys", help="manage API keys")
    keys_parser.set_defaults(usage=keys_parser)
    keys = keys_parser.add_subparsers(dest="action", metavar="{create,list,revoke}")
    create = keys.add_parser("create", help="make a key and print it alone on stdout")
    create.add_argument("--db", **db)
    create.add_argument("--org", required=True, type=_name, help="the organisation the key acts for (required)")
    create.add_argument("--mode", required=True, choices=("test", "live"), help="test or live: separate balances and data (required)")
    create.add_argument("--scope", default="admin", choices=("admin", "read"), help="admin: every call; read: reads only (default admin)")
    create.add_argument("--create-db", action="store_true",
                        help="create the default database (zapbilling.db here) if it does not exist; without it, it is refused;"
                             " a database named with --db (or its variable) is created when missing (default off)")
    lister = keys.add_parser("list", help="list keys (never the keys themselves)")
    lister.add_argument("--db", **db)
    revoke = keys.add_parser("revoke", help="refuse a key from the next request on")
    revoke.add_argument("key_id", help="the key's id (key_...), as `zapbilling keys list` shows it; never the secret")
    revoke.add_argument("--db", **db)

    gen_parser = sub.add_parser("gen", help="write what the schema generates")
    gen_parser.set_defaults(usage=gen_parser)
    gen = gen_parser.add_subparsers(dest="target", metavar="{client,openapi,docs}")
    for target, out, what in (("client", "clients/python", "the Python client package into DIR"),
                              ("openapi", "openapi.json", "the OpenAPI 3.1 document to FILE (- for stdout)"),
                              ("docs", "docs/api.md", "the API reference to FILE (- for stdout), running each example on a scratch database")):
        g = gen.add_parser(target, help=f"write {what}")
        g.add_argument("--out", default=out, help=f"where to write {_defaults(out)}")
        g.add_argument("--schema", help="the .zap file (default: the packaged schemas/billing.zap)")
        g.add_argument("--check", action="store_true", help="write nothing; exit 1 if what is there is missing or stale (default off)")
    export.add_parser(sub, env_default("db"))
    backup.add_parser(sub, env_default("db"))
    copy_db.add_parser(sub)
    migrate = sub.add_parser("migrate", help="bring the database's schema up to date, and do nothing else")
    migrate.add_argument("--db", **db)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command is None or getattr(args, "action", "") is None or getattr(args, "target", "") is None:
        args.usage.print_help()  # `zapbilling`, `zapbilling keys` or `zapbilling gen` alone
        return 2
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
        if exc.errno == errno.EADDRINUSE:  # bound before the database is opened (server.serve): nothing was created
            _fail(f"cannot serve on {config.host}:{config.port}: the port is taken (choose another --port, or stop what"
                  f" listens there); the database {describe(config.db)} was not opened")
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
        run = f"run `zapbilling gen {args.target} --out {args.out}`"
        if not Path(args.out).exists():  # the file (openapi, docs) or the folder (client)
            sys.stderr.write(f"zapbilling: {args.out} does not exist: {run}\n")
            return 1
        if stale := stale_files(files, out):
            which = "" if args.target in ("openapi", "docs") else f" ({', '.join(stale)})"
            sys.stderr.write(f"zapbilling: {args.out} is stale{which}: {run}\n")
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


SECRET_PREFIXES = ("zb_test_", "zb_live_")
"""What every key's secret starts with (the stores make `zb_<mode>_<token>`); ids start `key_`."""
KEY_LIST_HEADER = ("ID", "ORG", "MODE", "SCOPE", "SECRET", "CREATED", "STATE")
"""`keys list`'s first row; the rows under it are tab-separated in this order. SECRET is the
secret's first characters only (the stores keep its hash, never the secret)."""


def _key_database(args: Any) -> str:
    """The database a key command will use, as it says so on stderr: a SQLite file's absolute
    path, a PostgreSQL URL without its password. A SQLite file that does not exist is refused
    (exit 2), except by `keys create` given `--create-db` or a database named on purpose
    (--db other than the default, or ZAPBILLING_DB): the default, relative zapbilling.db is
    another file in another folder, and a key made in a new one would get 401 from the
    running server."""
    if is_postgres(args.db):
        return describe(args.db)  # no file to check: the database must exist (the store says so if not)
    path = os.path.abspath(sqlite_path(args.db))
    named = args.db != Config.db or ENV["db"] in os.environ
    creates = args.action == "create" and (args.create_db or named)
    if not os.path.exists(path) and not creates:
        create = ", or --create-db to create it there" if args.action == "create" else ""
        _fail(f"no database at {path}: pass --db (or set ZAPBILLING_DB) to name the server's database{create}")
    return path


async def _keys(args: Any) -> int:
    if args.action == "revoke" and args.key_id.startswith(SECRET_PREFIXES):
        _fail("that is a key's secret, not its id: use `zapbilling keys list` to find the id")  # never echoed
    where = _key_database(args)
    new = not is_postgres(args.db) and not os.path.exists(where)
    store = make_store(args.db)
    await store.open()
    try:
        if args.action == "create":
            key_id, secret = await store.create_key(args.org, args.mode, args.scope, system_clock())
            made = " (a new database)" if new else ""
            sys.stderr.write(f"created {key_id} for {args.org} ({args.mode}, {args.scope}) in {where}{made}\n")
            print(secret)
        elif args.action == "list":
            keys = await store.list_keys()
            print("\t".join(KEY_LIST_HEADER))
            for k in keys:
                state = f"revoked {format_ts(k.revoked_at)}" if k.revoked_at else "active"
                print(f"{k.id}\t{k.org}\t{k.mode}\t{k.scope}\t{k.hint}...\t{format_ts(k.created_at)}\t{state}")
            sys.stderr.write(f"{len(keys)} {'key' if len(keys) == 1 else 'keys'} in {where}\n")
        elif not await store.revoke_key(args.key_id, system_clock()):
            _fail(f"no such key: {args.key_id} in {where}")
        else:
            sys.stderr.write(f"revoked {args.key_id} in {where}\n")
    finally:
        await store.close()
    return 0
