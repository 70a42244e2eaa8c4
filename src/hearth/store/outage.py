"""Whether a store error is an outage worth waiting out, or a refusal that will not clear.

A writer that must not lose its work (a run's pump) waits out an outage: the database could not
be reached, was restarting, busy, locked, or out of disk for now. A statement the database
refuses (a table or column it lacks, a constraint, a corrupt file) fails the same way every
time, so waiting on it would hold the work forever: that is an error, not an outage.
"""

from __future__ import annotations

from sqlalchemy.exc import DBAPIError, DisconnectionError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

# PostgreSQL's SQLSTATE classes and codes that clear by themselves: connection exceptions,
# the server shutting down or starting, too many connections, a serialization failure or a
# deadlock (the transaction may simply run again).
_PG_TRANSIENT_CLASSES = ("08",)
_PG_TRANSIENT_CODES = {"57P01", "57P02", "57P03", "53300", "40001", "40P01"}
# SQLite's primary result codes that clear by themselves (or once an operator frees the disk).
_SQLITE_TRANSIENT = {
    "SQLITE_BUSY",
    "SQLITE_LOCKED",
    "SQLITE_IOERR",
    "SQLITE_FULL",
    "SQLITE_CANTOPEN",
}


def is_outage(exc: BaseException) -> bool:
    """Whether ``exc``, raised by the store, is an outage (see the module's docstring)."""
    if isinstance(exc, (DisconnectionError, PoolTimeout)):
        return True
    if not isinstance(exc, DBAPIError):
        return False
    if exc.connection_invalidated or isinstance(exc, InterfaceError):
        return True
    if not isinstance(exc, OperationalError):
        return False
    orig = exc.orig
    name = getattr(orig, "sqlite_errorname", None)
    if isinstance(name, str):
        return "_".join(name.split("_")[:2]) in _SQLITE_TRANSIENT  # SQLITE_IOERR_WRITE: IOERR
    sqlstate = getattr(orig, "sqlstate", None)
    if sqlstate is None:
        return True  # a connection that failed before any statement ran
    return str(sqlstate).startswith(_PG_TRANSIENT_CLASSES) or sqlstate in _PG_TRANSIENT_CODES
