"""Diameter Gy front-end (RFC 6733, RFC 4006, 3GPP TS 32.299): translates the wire to the core and back."""
