# Compiled builds only (setup.py): see store/schema.pxd. The engine becomes an extension type, and its per-request
# methods cpdef methods that name the record types of their locals, so that reading and writing a bucket, a
# session or a reservation is a struct access; the context's balance queries (chf/core/context.pxd) and the
# per-request renewal check (chf/core/renewals.pxd) are called directly too. setup.py compiles with nonecheck: a
# typed local that holds None raises AttributeError as Python would.
import cython

from chf.core.context cimport Context
from chf.core.renewals cimport bring_up_to_date
from store.schema cimport Account, BalanceSet, Bucket, Reservation, Session, Subscriber


cdef class Engine:
    cdef public object _by_version, _span, _versions, config

    @cython.locals(ctx=Context, session=Session, sub=Subscriber)
    # `txn` is untyped: the store's transaction is LMDB's or the Redis store's (store/redisstore.py); see
    # README "Compiled hot path" for what that costs the LMDB path.
    cpdef charge(self, txn, req, now)

    cpdef _replay(self, Session session, req)

    cpdef _follow_client(self, Session session, req)

    cpdef _charge_unit(self, Context ctx, Session session, unit_req, plan, serving_network, terminating)

    cpdef _finish(self, Context ctx, Session session, req, answer, validity, closed)

    @cython.locals(reservation=Reservation, pay=Context)
    cpdef _commit_usage(self, Context ctx, Session session, unit_req, unit_answer, plan)

    cpdef _usage_event(self, Context ctx, Session session, unit_req, units, unit, used)

    @cython.locals(bucket=Bucket)
    cpdef _settle_reservation(self, Context ctx, Reservation reservation, left, impacts)

    @cython.locals(bucket=Bucket)
    cpdef _take_unreserved(self, Context ctx, unit, rg, left, over, impacts, zone)

    cpdef _charge_wallet(self, Context ctx, tariff, rg, zone, units, event, Context pay)

    @cython.locals(reservation=Reservation)
    cpdef _tariff(self, Context ctx, plan, rg, reservation)

    @cython.locals(reservation=Reservation, bucket=Bucket)
    cpdef _release(self, Context ctx, Session session, rg)

    @cython.locals(pay=Context)
    cpdef _grant(self, Context ctx, Session session, unit_req, unit_answer, plan, serving_network)

    @cython.locals(bucket=Bucket)
    cpdef _reserve_buckets(self, Context ctx, unit, rg, want, portions, zone)

    @cython.locals(account=Account, ctx=Context)
    cpdef context(self, txn, Subscriber sub, now, account_id=*)

    cpdef line_plan(self, Context ctx)

    @cython.locals(pay=Context)
    cpdef _payer(self, Context ctx, Session session, plan, rg, zone)

    @cython.locals(pay=Context)
    cpdef _payer_by_id(self, Context ctx, account_id)

    cpdef _usage_payer(self, Context ctx, Session session, reservation, plan, rg, zone)

    cpdef _reserve_money(self, Context ctx, Context pay, tariff, rg, zone, want)

    cpdef _reserve_allowances(self, Context pay, unit, rg, want, portions, zone)
