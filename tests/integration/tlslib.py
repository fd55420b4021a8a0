"""tlslib — a throw-away PKI made with the openssl CLI for the TLS tests.

    pki = Pki(h.path("pki"))
    cert, key = pki.leaf("a", ["a.test"])            # signed by pki.ca
    cert, key = pki.leaf("c-ec", ["c.test"], ec=True)
    other = Pki(h.path("other"))                      # an unrelated CA
"""

import os
import ssl
import subprocess
import tempfile


def _run(*argv):
    cp = subprocess.run(argv, capture_output=True, timeout=60)
    if cp.returncode != 0:
        raise AssertionError("%s failed: %s" % (" ".join(argv), cp.stderr.decode(errors="replace")))
    return cp


class Pki:
    """A CA in `directory`; leaf() results are cached per name, so tests that
    share a Pki (see shared()) pay for each key once."""

    def __init__(self, directory, name="waygate test CA"):
        self.dir = directory
        os.makedirs(directory, exist_ok=True)
        self.ca_key = os.path.join(directory, "ca.key")
        self.ca = os.path.join(directory, "ca.crt")
        if os.path.exists(self.ca):
            return                      # made by an earlier test of this run
        _run("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", self.ca_key,
             "-out", self.ca, "-days", "2", "-subj", "/CN=%s" % name)

    def leaf(self, name, dns=(), ips=(), ec=False, client=False, cn=None, days=2):
        spec = repr((tuple(dns), tuple(ips), ec, client, cn, days))
        marker = os.path.join(self.dir, name + ".spec")
        try:
            with open(marker) as f:
                if f.read() == spec:
                    return os.path.join(self.dir, name + ".crt"), os.path.join(self.dir, name + ".key")
        except OSError:
            pass
        pair = self._make_leaf(name, dns, ips, ec, client, cn, days)
        with open(marker, "w") as f:
            f.write(spec)
        return pair

    def _make_leaf(self, name, dns, ips, ec, client, cn, days):
        key = os.path.join(self.dir, name + ".key")
        csr = os.path.join(self.dir, name + ".csr")
        crt = os.path.join(self.dir, name + ".crt")
        ext = os.path.join(self.dir, name + ".ext")
        if ec:
            _run("openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", key)
        else:
            _run("openssl", "genrsa", "-out", key, "2048")
        _run("openssl", "req", "-new", "-key", key, "-out", csr, "-subj",
             "/O=waygate tests/CN=%s" % (cn or (dns[0] if dns else name)))
        sans = ["DNS:%s" % d for d in dns] + ["IP:%s" % i for i in ips]
        with open(ext, "w") as f:
            if sans:
                f.write("subjectAltName=%s\n" % ",".join(sans))
            f.write("extendedKeyUsage=%s\n" % ("clientAuth" if client else "serverAuth"))
        _run("openssl", "x509", "-req", "-in", csr, "-CA", self.ca, "-CAkey", self.ca_key,
             "-CAcreateserial", "-out", crt, "-days", str(days), "-extfile", ext)
        return crt, key


def client_context(ca=None, cert=None, key=None, min_version=None, max_version=None):
    ctx = ssl.create_default_context(cafile=ca) if ca else ssl._create_unverified_context()
    if min_version:
        ctx.minimum_version = min_version
    if max_version:
        ctx.maximum_version = max_version
    if cert:
        ctx.load_cert_chain(cert, key)
    return ctx


def peer_cn(sock):
    """The subject CN of the certificate the server presented."""
    der = sock.getpeercert(binary_form=True)
    cp = subprocess.run(["openssl", "x509", "-inform", "DER", "-noout", "-subject",
                         "-nameopt", "multiline"], input=der, capture_output=True, timeout=10)
    for line in cp.stdout.decode().splitlines():
        line = line.strip()
        if line.startswith("commonName"):
            return line.split("=", 1)[1].strip()
    return None


def shared(name="main"):
    """A Pki shared by the tests of one runner (each test is a child process
    of tests/run, which removes the directory when it ends): certificates are
    read-only for the tests, so sharing them only saves key generation."""
    base = os.environ.get("WAYGATE_RUN_TMP") or os.path.join(
        tempfile.gettempdir(), "wg-pki-%d" % os.getppid())
    return Pki(os.path.join(base, "pki-" + name), name="waygate test CA %s" % name)
