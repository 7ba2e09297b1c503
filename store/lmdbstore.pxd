# Compiled builds only (setup.py): see store/schema.pxd. A Txn is created per operation and its record methods are
# called several times per request: as cpdef methods, callers that know the type (chf/engine.pxd) call them
# directly.
from store.schema cimport Account, BalanceSet, Session


cdef class Txn:
    cdef public object _db, _store, _txn, write, wrote

    cpdef _put(self, key, value, db, append=*)
    cpdef get_account(self, account_id)
    cpdef put_account(self, Account account)
    cpdef get_subscriber(self, line_id)
    cpdef get_line_balances(self, line_id)
    cpdef put_line_balances(self, line_id, BalanceSet balances)
    cpdef get_account_balances(self, account_id)
    cpdef put_account_balances(self, account_id, BalanceSet balances)
    cpdef get_session(self, key)
    cpdef put_session(self, Session session, indexed=*)
    cpdef append_event(self, event)


cdef class _Pending:
    cdef public object done, fn, future, nested, result
