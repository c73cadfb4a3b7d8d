"""The journal in PostgreSQL (``--state postgresql://…``, the ``pg`` extra).

================  ==========================================================
module            what it holds
================  ==========================================================
``url``           a database URL told from a path, shown without its password
``schema``        the tables, keyed for several runners, and their versions
``executor``      :class:`PgExecutor`: operations in order, group commit
``ledger``        :class:`PgLedger`: the :class:`~..ledger.Ledger` in SQL
``lease``         several runners: leases, claims, the submit fence, adoption
``shared_limits`` the account's slot pool and request bucket, shared
================  ==========================================================

Only ``url`` is imported without psycopg installed.
"""

from __future__ import annotations

from .url import EXTRA, is_database, needs_driver, shown

__all__ = ["EXTRA", "is_database", "needs_driver", "shown"]
