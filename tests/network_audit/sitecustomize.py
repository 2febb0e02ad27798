"""Loaded at start-up by every Python process whose PYTHONPATH holds this folder (the tests put it
there): when CRISP_NETWORK_LOG names a file, every attempt at a network connection or a host-name
lookup is appended to it (Python's audit events), with the process's command line. A test that
finds the file empty knows that nothing even tried the network."""

import os
import sys

_LOG = os.environ.get("CRISP_NETWORK_LOG")
_EVENTS = {"socket.connect", "socket.getaddrinfo", "socket.gethostbyname", "socket.sendto"}


def _record(event, args):
    if event not in _EVENTS:
        return
    if event == "socket.connect" and not isinstance(args[1], tuple):
        return  # a Unix socket (an address that is a path) is not the network
    with open(_LOG, "a") as handle:
        handle.write(f"{os.getpid()} {event} {args[1:]!r:.200} :: {' '.join(sys.argv)[:300]}\n")


if _LOG:
    sys.addaudithook(_record)
