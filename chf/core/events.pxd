# Compiled builds only (setup.py): see chf/core/engine.pxd. An event request's context and line, and the buckets a
# direct debit takes units from, are typed records.
import cython

from chf.core.context cimport Context
from store.lmdbstore cimport Txn
from store.schema cimport Bucket, Subscriber


@cython.locals(ctx=Context, sub=Subscriber)
cpdef charge_event(engine, Txn txn, req, now)

cpdef _rate_units(Context ctx, plan, req, answer)

@cython.locals(bucket=Bucket)
cpdef _debit(Context ctx, req, unit_req, ua, answer, p)
