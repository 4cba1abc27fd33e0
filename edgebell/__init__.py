"""edgebell: a doorbell press on the serial port becomes an Apple push on every authorised phone."""

__version__ = "0.1.0"
