# Compiled builds only (setup.py): the stored records become extension types. The fields stay Python objects
# (the semantics are the .py file's), but reaching them is a struct access instead of a type-dictionary lookup:
# the engine reads and writes these fields many times per request.
cdef class Tenant:
    cdef public object created, currency, id, name

cdef class Account:
    cdef public object active_lines, balance, created, credit_limit, currency, cycle_day, id, parent, payment, plan
    cdef public object reserved, tenant

cdef class Subscriber:
    cdef public object account, created, eid, history, iccid, id, imsi, msisdn, plan, state, state_since, tenant

cdef class Bucket:
    cdef public object id, initial, kind, name, priority, rating_groups, remaining, reserved, unit, valid_from
    cdef public object valid_to

cdef class BalanceSet:
    cdef public object buckets, next_bucket_id, period_end, period_index, period_start, plan, renewal_pending, usage

cdef class Reservation:
    cdef public object granted, money, portions, rating_group, tariff, unit, zone

cdef class Session:
    cdef public object account, answers, closed, created, expires, key, last_request, notify, protocol
    cdef public object reservations, seen, serving_network, subscriber, updated
