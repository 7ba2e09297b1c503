# Compiled builds only (setup.py): the decoding loop on C integers and byte strings.
import cython


@cython.locals(next_state=bytes, flags=bytes, emitted=list, out=bytearray, state=cython.uint, step=cython.uint,
               byte=cython.uchar, index=cython.uint, data=bytes)
cpdef bytes decode_huffman(huffman_string)
