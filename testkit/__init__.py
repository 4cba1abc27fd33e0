"""Test doubles that run for real: an APNs HTTP/2 stand-in server and a throwaway PKI.

``apns_server`` (the stand-in's API and command line), ``pki`` (certificates and
keys). Used by the tests, the demo and the benchmarks; never by the daemon itself.
"""

from testkit.apns_standin import ApnsStandIn, ReceivedPush
from testkit.pki import AuthKeyFiles, CertFiles, KeyPairFiles, TestPki, make_test_pki
from testkit.standin_thread import StandInThread

__all__ = [
    "ApnsStandIn",
    "AuthKeyFiles",
    "CertFiles",
    "KeyPairFiles",
    "ReceivedPush",
    "StandInThread",
    "TestPki",
    "make_test_pki",
]
