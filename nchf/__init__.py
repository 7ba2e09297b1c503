"""Nchf_ConvergedCharging (TS 32.290 / 32.291) front-end over HTTP/2: translates the SBI to the core and back."""
