"""Imports tests/integration/etcdlib (real etcd on tmpfs, waygate with
registry.etcd) for the discovery scenarios; wglib reads WAYGATE_BUILD at
import time, so it is set first."""

import os
import sys

from ._common import ROOT


def load(build):
    os.environ["WAYGATE_BUILD"] = build
    path = os.path.join(ROOT, "tests", "integration")
    if path not in sys.path:
        sys.path.insert(0, path)
    import etcdlib
    import wglib
    return etcdlib, wglib
