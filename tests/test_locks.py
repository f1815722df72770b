"""Advisory-lock keys: every class the SQL takes is one the registry (movrec.locks) defines."""

from __future__ import annotations

import re
from pathlib import Path

from movrec import locks

SQL = Path(__file__).resolve().parents[1] / "sql"
LOCK_CALL = re.compile(r"pg_(?:try_)?advisory_(?:xact_)?lock(?:_shared)?\(\s*([^,)]+)", re.I)


def test_sql_lock_classes_are_registered() -> None:
    registered = {str(locks.REFRESH), str(locks.SHARED_BUILD), str(locks.DEPLOY), locks.CF_USER_SQL}
    found = {
        (path.name, m.group(1).strip())
        for path in sorted(SQL.rglob("*.sql"))
        for m in LOCK_CALL.finditer(path.read_text(encoding="utf-8"))
    }
    assert found, "no advisory lock found: the pattern no longer matches the SQL"
    assert {(name, key) for name, key in found if key not in registered} == set()


def test_lock_classes_do_not_collide() -> None:
    classes = [locks.REFRESH, locks.SHARED_BUILD, locks.DEPLOY]
    assert len(set(classes)) == len(classes)
