"""Workaround for h2 closing the whole connection when a GOAWAY arrives (python-hyper/h2#1181).

RFC 9113 section 6.8 lets the streams up to a GOAWAY's ``last_stream_id`` complete:
the server still answers them. h2 instead moves its connection state machine to
CLOSED on receipt, and every later frame (those very answers) then raises
``ProtocolError``. APNs sends GOAWAY routinely (idle, maintenance), so without this
a graceful goodbye loses the answers of every push in flight, and they are sent twice.

The fix uses only h2's public names: :class:`h2.connection.H2ConnectionStateMachine`
is a public class and ``H2Connection.state_machine`` a public attribute. A client
that received GOAWAY stays in CLIENT_OPEN at the HTTP/2 level; starting no new
stream on it is our own rule (``ApnsConnection`` drains). Remove this module once
h2 keeps the connection open for the remaining streams.
"""

from __future__ import annotations

import h2.connection
import h2.events
from h2.connection import ConnectionInputs, ConnectionState


class _GoawayTolerantStateMachine(h2.connection.H2ConnectionStateMachine):
    def process_input(self, input_: ConnectionInputs) -> list[h2.events.Event]:
        if input_ is ConnectionInputs.RECV_GOAWAY and self.state is ConnectionState.CLIENT_OPEN:
            return []  # h2 would go to CLOSED here; the remaining streams still finish
        return super().process_input(input_)


def tolerate_goaway(conn: h2.connection.H2Connection) -> None:
    """Let ``conn`` (a fresh client connection) receive answers after a GOAWAY."""
    if conn.state_machine.state is not ConnectionState.IDLE:
        raise ValueError("install the GOAWAY workaround before the connection starts")
    conn.state_machine = _GoawayTolerantStateMachine()
