# Compiled builds only (setup.py): see chf/core/engine.pxd. The context of one operation becomes an extension
# type, and its balance queries cpdef methods that the engine, one-shot events and renewals call directly, with
# the record types of their locals.
import cython

from store.schema cimport BalanceSet, Bucket


cdef class Context:
    cdef public object account, account_dirty, acct_bs, acct_bs_dirty, catalogue, events, line_bs, line_bs_dirty
    cdef public object now, payers, sub, tax, txn, upline, versions  # txn: LMDB's or the Redis store's (see engine.pxd)

    @cython.locals(bs=BalanceSet)
    cpdef bucket(self, src, bucket_id)

    cpdef mark(self, src)

    @cython.locals(b=Bucket)
    cpdef usable_buckets(self, unit, rg, zone=*)
