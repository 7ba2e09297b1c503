# Compiled builds only (setup.py): the requests and answers that cross every layer become extension types. Cython
# compiles their @dataclass itself (__init__, __eq__, __repr__ in C); the .py cannot ask for slots=True, which
# Cython's dataclass does not take: the pure-Python classes keep a __dict__.
cdef class UsageReport:
    cdef public object units, reason

cdef class UnitRequest:
    cdef public object rating_group, service_id, requested, used, reason

cdef class ChargingRequest:
    cdef public object kind, session, number, identities, units, protocol, action, serving_network, rat, apn
    cdef public object notify, idempotency_key, currency

cdef class FinalUnit:
    cdef public object action, redirect_address, filter_id, restriction_rules

cdef class UnitAnswer:
    cdef public object rating_group, result, service_id, unit, granted, validity_time, volume_threshold
    cdef public object time_threshold, quota_holding_time, final, charged, over_grant

cdef class ChargingAnswer:
    cdef public object result, session, number, units, currency, balance, cost, enough_credit, detail, duplicate
