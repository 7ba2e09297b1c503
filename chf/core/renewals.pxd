# Compiled builds only (setup.py): see chf/core/engine.pxd. Every request brings its balance sets up to date
# first: these two run per request, as cpdef functions the engine calls directly (chf/core/engine.pxd cimports
# them). Renewals themselves (once per period and line) stay ordinary functions.
import cython

from chf.core.context cimport Context
from store.schema cimport BalanceSet, Bucket


@cython.locals(b=Bucket)
cpdef needs_upkeep(BalanceSet bs, now)

cpdef bring_up_to_date(Context ctx)
