"""The radio side: bytes from the serial receiver become typed frames."""
