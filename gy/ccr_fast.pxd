# Compiled builds only (setup.py): see store/schema.pxd. A layout of gy/ccr_fast.py is read for every CCR of its shape.
cdef class _Layout:
    cdef public object check, headers, msccs, once, ps, subscription_ids, top_rsu, top_usus
