"""The h2 connection of the Nchf server (kept out of the compiled modules: see ServerH2Connection)."""

from __future__ import annotations

from typing import Any

import h2
import h2.connection
import h2.errors
import h2.exceptions
import hyperframe.frame


class ServerH2Connection(h2.connection.H2Connection):
    """h2's connection, less one cost: h2 4.x's `_receive_frame` formats `repr(frame)` for a trace log line that
    its default logger drops, for every frame received (5 % of h2's instructions per request, measured with
    callgrind). The override below is that method as h2 4.4 has it, without the line; with another major
    version of h2 the stock method stays (see `_OVERRIDE_RECEIVE_FRAME`). This module is interpreted, not compiled:
    the method is all attribute lookups, which CPython's specialising interpreter does faster than generic
    compiled code."""

    def _receive_frame(self, frame: Any) -> list[Any]:
        try:
            frames, events = self._frame_dispatch_table[frame.__class__](frame)
        except h2.exceptions.StreamClosedError as e:
            # Closed by RST_STREAM: answer with RST_STREAM; otherwise a connection error (h2's handling).
            if self._stream_is_closed_by_reset(e.stream_id):
                f = hyperframe.frame.RstStreamFrame(e.stream_id)
                f.error_code = e.error_code
                self._prepare_for_sending([f])
                events = e._events
            else:
                raise
        except h2.exceptions.StreamIDTooLowError as e:
            if self._stream_is_closed_by_reset(e.stream_id):
                f = hyperframe.frame.RstStreamFrame(e.stream_id)
                f.error_code = h2.errors.ErrorCodes.STREAM_CLOSED
                self._prepare_for_sending([f])
                events = []
            elif self._stream_is_closed_by_end(e.stream_id):
                raise h2.exceptions.StreamClosedError(e.stream_id) from e
            else:
                raise
        else:
            self._prepare_for_sending(frames)
        return events  # type: ignore[no-any-return]


_OVERRIDE_RECEIVE_FRAME = h2.__version__.split(".")[0] == "4"
if not _OVERRIDE_RECEIVE_FRAME:  # pragma: no cover - another h2 major version: its own method
    del ServerH2Connection._receive_frame
