# Compiled builds only (setup.py): see chf/core/engine.pxd. An event request's context and line, the buckets a
# debit takes units from and the debits a refund reverses are typed records.
import cython

from chf.core.context cimport Context
from store.schema cimport Bucket, Subscriber


@cython.locals(ctx=Context, sub=Subscriber)
cpdef charge_event(engine, txn, req, now)

cpdef _rate_units(job)

@cython.locals(ctx=Context, bucket=Bucket)
cpdef _take(job, unit_req, ua, p, reason)

@cython.locals(ctx=Context, bucket=Bucket)
cpdef _reverse(job, debit, want)
