"""A scratch database migrated like the service's, for the experiments in this folder."""
import contextlib, glob, os

import psycopg

ADMIN = os.environ.get("DATABASE_ADMIN_URL", "postgres://postgres@127.0.0.1:5432/postgres")
MIGRATIONS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "migrations", "*.sql")


@contextlib.contextmanager
def migrated(name, *extra_statements):
    """Creates database `name` afresh, applies migrations/ and `extra_statements`, loads
    pg_stat_statements and resets it; yields the database's URL and drops the database after."""
    with psycopg.connect(ADMIN, autocommit=True) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.execute(f"CREATE DATABASE {name}")
    url = psycopg.conninfo.make_conninfo(ADMIN, dbname=name)
    with psycopg.connect(url, autocommit=True) as setup:
        for path in sorted(glob.glob(MIGRATIONS)):
            setup.execute(open(path).read())
        for statement in extra_statements:
            setup.execute(statement)
        setup.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        setup.execute("SELECT pg_stat_statements_reset()")
    try:
        yield url
    finally:
        with psycopg.connect(ADMIN, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
