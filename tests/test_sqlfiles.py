"""sqlfiles.statements(): the install script one statement at a time (what a Citus
coordinator is given), split only where a statement ends."""

from __future__ import annotations

from movrec_cli import sqlfiles


def test_statements_split_only_at_statement_ends() -> None:
    script = """-- a comment; with a semicolon
CREATE FUNCTION f() RETURNS text LANGUAGE sql AS $$ SELECT 'a;b' $$;
/* block; comment */ SELECT 'it''s; quoted', "odd;name" FROM t;
DO $body$ BEGIN PERFORM 1; END $body$;
SELECT $1
"""
    parts = sqlfiles.statements(script)
    assert len(parts) == 4
    assert parts[0].strip().endswith("SELECT 'a;b' $$;")
    assert '"odd;name" FROM t;' in parts[1]
    assert parts[2].strip() == "DO $body$ BEGIN PERFORM 1; END $body$;"
    assert parts[3].strip() == "SELECT $1"
    assert "".join(parts).rstrip() == script.rstrip()


def test_the_install_script_splits_into_its_statements() -> None:
    script = sqlfiles.full_script()
    parts = sqlfiles.statements(script)
    assert len(parts) > 200
    assert "".join(parts).strip() == script.strip()
    assert all(p.rstrip().endswith(";") for p in parts)
