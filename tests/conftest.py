"""Fixtures shared by the whole suite.

* No test reaches the network: a guard (autouse, installed for the whole session) makes every Python-level socket
  connection or name lookup to a non-loopback host raise :class:`NetworkAccessBlocked` at once, and a test during which
  such an attempt was made fails at teardown (even if the code under test swallowed the error). Loopback stays
  allowed, for the servers of tests/_servers.py. ``no_network`` yields the guard (its ``attempts``).
* ``hf_server`` / ``url_server`` / ``hf_env``: thin wrappers around tests/_servers.py (a fake Hugging Face Hub, a plain
  URL file server, ``huggingface_hub`` pointed at the fake hub with an isolated cache).
* ``one_torch_thread``.
* ``tiny``: a CSAP-T model with random weights (seed 0) in eval mode, one per test module, with
  ``tiny_num_classes`` classes (3; a module overrides that fixture for another count).
* Under pytest-xdist (``pytest -n N``) each worker gets its share of the cores: torch's intra-op threads, and
  ``OMP_NUM_THREADS`` for the child processes tests start, are set to ``cores // N`` (at least 1), so that N workers
  do not each run a full set of threads on the same cores.

* ``backend="auto"`` runs PyTorch in the suite (``CSAP_ZOO_BACKEND=torch``, set here for every worker and child
  process): most tests are about what happens around the network, and an OpenVINO conversion per test model would
  cost seconds each. The tests of the OpenVINO backend name it, and the tests of the ``"auto"`` pick unset the
  variable.

The tests folder goes on ``sys.path`` here, so any test module (any folder, any import mode, one file or the whole
suite) can ``import _servers``.
"""
from __future__ import annotations

import ipaddress
import os
import socket
import sys
import threading
from pathlib import Path
from typing import Any, Iterator, NoReturn

import pytest
import torch

_TESTS = str(Path(__file__).resolve().parent)
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)

import _servers  # noqa: E402  (needs the sys.path entry above)


def _share_the_cores_between_workers() -> None:
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
    if workers > 1:
        threads = max(1, (os.cpu_count() or 1) // workers)
        torch.set_num_threads(threads)
        os.environ["OMP_NUM_THREADS"] = str(threads)


_share_the_cores_between_workers()
os.environ["CSAP_ZOO_BACKEND"] = "torch"

# --------------------------------------------------------------------------------------------------------------------
# Network guard
# --------------------------------------------------------------------------------------------------------------------

_LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"})


class NetworkAccessBlocked(RuntimeError):
    """Raised by the ``no_network`` guard on a non-loopback connection / lookup.

    Deliberately *not* an ``OSError``: code that treats ``OSError`` as "network down, fall back" must not be able to
    swallow it silently. (Code that swallows every ``Exception`` still gets caught: the attempt is recorded and the
    test fails at teardown.)
    """


def _is_loopback_host(host: Any) -> bool:
    """Whether ``host`` (a name or an address, str or bytes) is this machine's loopback."""
    if isinstance(host, (bytes, bytearray)):
        host = bytes(host).decode("ascii", "replace")
    if not isinstance(host, str):
        return False
    host = host.strip().strip("[]").lower().rstrip(".")
    if host in _LOOPBACK_NAMES:
        return True
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def _is_numeric_host(host: Any) -> bool:
    """Whether ``host`` is an IP address rather than a name (``connect`` then decides)."""
    if isinstance(host, (bytes, bytearray)):
        host = bytes(host).decode("ascii", "replace")
    try:
        ipaddress.ip_address(str(host).strip("[]").split("%", 1)[0])
    except ValueError:
        return False
    return True


class NetworkGuard:
    """What the ``no_network`` fixture yields.

    ``attempts``: list of ``(kind, target)`` for every blocked attempt, ``kind`` in {"connect", "getaddrinfo"}.
    A test that provokes a blocked attempt on purpose must ``clear()`` it, otherwise teardown fails the test.
    """

    def __init__(self) -> None:
        self.attempts: list[tuple[str, Any]] = []
        self._lock = threading.Lock()

    def clear(self) -> None:
        """Forget the attempts recorded so far."""
        with self._lock:
            self.attempts.clear()

    def _block(self, kind: str, target: Any) -> NoReturn:
        with self._lock:
            self.attempts.append((kind, target))
        raise NetworkAccessBlocked(
            f"tests: non-loopback network access blocked ({kind} {target!r}); tests reach only the loopback servers "
            "of tests/_servers.py"
        )

    def install(self, mp: pytest.MonkeyPatch) -> None:
        """Patch ``socket`` (through ``mp``, which undoes it): ``socket.socket.connect``/``connect_ex`` (which
        ``socket.create_connection``, ``http.client``, httpx and urllib all go through), ``socket.create_connection``
        and ``socket.getaddrinfo`` (name lookups of non-loopback host names -- numeric addresses are let through to
        ``connect``, which then decides). AF_UNIX sockets are allowed. Not covered: native code doing its own
        networking (e.g. the Rust ``hf_xet`` extension -- ``hf_env`` disables Xet for that reason) and child
        processes."""
        orig_connect = socket.socket.connect
        orig_connect_ex = socket.socket.connect_ex
        orig_create_connection = socket.create_connection
        orig_getaddrinfo = socket.getaddrinfo
        inet = (socket.AF_INET, socket.AF_INET6)

        def _check(sock: socket.socket, address: Any) -> None:
            if sock.family in inet:
                host = address[0] if isinstance(address, tuple) and address else address
                if not _is_loopback_host(host):
                    self._block("connect", address)

        def connect(sock: socket.socket, address: Any) -> None:
            _check(sock, address)
            return orig_connect(sock, address)

        def connect_ex(sock: socket.socket, address: Any) -> int:
            _check(sock, address)
            return orig_connect_ex(sock, address)

        def create_connection(address: Any, *args: Any, **kwargs: Any) -> socket.socket:
            host = address[0] if isinstance(address, tuple) and address else address
            if not _is_loopback_host(host):
                self._block("connect", address)
            return orig_create_connection(address, *args, **kwargs)

        def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> list:
            if host not in (None, "", b"") and not _is_loopback_host(host) and not _is_numeric_host(host):
                self._block("getaddrinfo", host)
            return orig_getaddrinfo(host, *args, **kwargs)

        mp.setattr(socket.socket, "connect", connect)
        mp.setattr(socket.socket, "connect_ex", connect_ex)
        mp.setattr(socket, "create_connection", create_connection)
        mp.setattr(socket, "getaddrinfo", getaddrinfo)


_GUARD = NetworkGuard()


@pytest.fixture(scope="session", autouse=True)
def _network_guard_installed() -> Iterator[NetworkGuard]:
    """The guard is in place for the whole session, session- and module-scoped fixtures included."""
    with pytest.MonkeyPatch.context() as mp:
        _GUARD.install(mp)
        yield _GUARD


@pytest.fixture(autouse=True)
def _no_network_in_any_test(_network_guard_installed: NetworkGuard) -> Iterator[NetworkGuard]:
    """Every test: a blocked attempt made during the test fails it at teardown."""
    guard = _network_guard_installed
    guard.clear()
    yield guard
    if guard.attempts:
        attempts = list(guard.attempts)
        guard.clear()
        pytest.fail(f"test tried to reach the network (non-loopback): {attempts}", pytrace=False)


@pytest.fixture
def no_network(_no_network_in_any_test: NetworkGuard) -> NetworkGuard:
    """The guard (already active in every test), for tests that read or ``clear()`` its ``attempts``."""
    return _no_network_in_any_test


# --------------------------------------------------------------------------------------------------------------------
# Loopback servers (tests/_servers.py)
# --------------------------------------------------------------------------------------------------------------------


@pytest.fixture
def hf_server() -> Iterator[_servers.FakeHub]:
    """A fake Hugging Face Hub on loopback, closed after the test."""
    server = _servers.FakeHub()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def url_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[_servers.UrlServer]:
    """A plain HTTP file server on loopback (proxy env vars unset), closed after the test."""
    _servers.no_proxies(monkeypatch)
    server = _servers.UrlServer()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def hf_env(hf_server: _servers.FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[_servers.HfEnv]:
    """``huggingface_hub`` pointed at ``hf_server`` with an isolated cache under ``tmp_path``; all undone after."""
    try:
        yield _servers.point_hf_hub_at(hf_server, tmp_path / "hf_home", monkeypatch)
    finally:
        _servers.reset_hf_session()


# --------------------------------------------------------------------------------------------------------------------
# Threads
# --------------------------------------------------------------------------------------------------------------------


@pytest.fixture
def one_torch_thread():
    """Run a test on one intra-op thread: on a 2-core machine shared with other torch processes, multi-threaded
    kernels oversubscribe the cores and slow each other down many times over."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_num_classes() -> int:
    """How many classes ``tiny`` predicts; a test module overrides this fixture for another count."""
    return 3


@pytest.fixture(scope="module")
def tiny(tiny_num_classes: int) -> torch.nn.Module:
    """A CSAP-T model with random weights (seed 0) in eval mode, built once per test module."""
    import csap_zoo

    torch.manual_seed(0)
    return csap_zoo.create_model("csap_tiny", num_classes=tiny_num_classes).eval()
