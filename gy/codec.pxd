# Compiled builds only (setup.py): see store/schema.pxd. A Message is made per received Diameter message and its
# fields are read throughout the CCR's handling.
cdef class Avp:
    cdef public object _children, buf, code, end, flags, start, vendor

cdef class Message:
    cdef public object _avps, app, buf, code, e2e, flags, hbh

cdef class AvpEncoder:
    cdef public object code, flags, name, type, vendor, word
