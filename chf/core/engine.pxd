# Compiled builds only (setup.py): see store/schema.pxd. The engine's per-request state and the engine itself
# become extension types, and the per-request methods name the record types of their locals, so that reading
# and writing a bucket, a session or a reservation is a struct access. setup.py compiles with nonecheck: a
# typed local that holds None raises AttributeError as Python would.
import cython

from store.lmdbstore cimport Txn as LmdbTxn  # the compiled engine calls the LMDB Txn's cpdef methods directly
from store.schema cimport Account, BalanceSet, Bucket, Reservation, Session, Subscriber


cdef class Context:
    cdef public object account, account_dirty, acct_bs, acct_bs_dirty, catalogue, events, line_bs, line_bs_dirty
    cdef public object now, sub
    cdef public LmdbTxn txn


cdef class Engine:
    cdef public object _by_version, _catalogue, _version, config

    @cython.locals(ctx=Context, session=Session, sub=Subscriber)
    cpdef charge(self, LmdbTxn txn, req, now)

    cpdef _finish(self, Context ctx, Session session, req, answer, validity, closed)

    @cython.locals(reservation=Reservation, bucket=Bucket, line_bs=BalanceSet, account=Account)
    cpdef _commit_usage(self, Context ctx, Session session, unit_req, unit_answer, plan)

    @cython.locals(bucket=Bucket, account=Account)
    cpdef _grant(self, Context ctx, Session session, unit_req, unit_answer, plan, serving_network)

    @cython.locals(b=Bucket, bs=BalanceSet)
    cpdef _usable_buckets(self, Context ctx, plan, unit, rg)

    @cython.locals(bs=BalanceSet)
    cpdef _bucket(self, Context ctx, src, bucket_id)

    @cython.locals(reservation=Reservation, bucket=Bucket, account=Account)
    cpdef _release(self, Context ctx, Session session, rg)

    @cython.locals(account=Account, ctx=Context)
    cpdef context(self, LmdbTxn txn, Subscriber sub, now, account_id=*)

    cpdef bring_up_to_date(self, Context ctx)

    cpdef line_plan(self, Context ctx)

    @cython.locals(reservation=Reservation)
    cpdef _tariff(self, plan, rg, reservation)
