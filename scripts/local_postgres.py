"""A throw-away local PostgreSQL server from the ``pgserver`` wheel (a dev dependency), for the
ledger tests (``tests/ledger_backends.py``) and the ledger benchmark (``scripts/bench_ledger.py``).

The server's data folder is a new temporary folder, deleted when the process exits (or earlier
by ``handle.cleanup()``); nothing is started on a port (Unix socket only).
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
import urllib.parse
import warnings
from pathlib import Path
from typing import Any


def start_postgres(prefix: str = "dpface-pg-") -> tuple[str, Any]:
    """(the admin URL ``postgresql://postgres@<socket folder>/<db>``, the server handle)."""
    import psycopg

    with warnings.catch_warnings():  # platformdirs: "XDG_RUNTIME_DIR is not set" (pgserver)
        warnings.simplefilter("ignore")
        import pgserver

        folder = Path(tempfile.mkdtemp(prefix=prefix))
        # registered first, so it runs after pgserver's own clean-up (which stops the server)
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        srv = pgserver.get_server(folder / "data", cleanup_mode="delete")
    params = psycopg.conninfo.conninfo_to_dict(srv.get_uri())
    host = urllib.parse.quote(str(params["host"]), safe="")
    return f"postgresql://{params.get('user', 'postgres')}@{host}/{params['dbname']}", srv
