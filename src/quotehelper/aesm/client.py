"""The Python counterpart of libsgx-quote-ex: the quote-ex calls, and a provider that rides out restarts.

Layers:
- transports: `SocketTransport` (one connection per call, AESM framing, like the C++ client) and
  `InProcessTransport` (the same handlers called directly on an engine loaded in this process);
- `AesmClient`: the raw calls (`init_quote_ex`, `get_quote_size_ex`, `get_quote_ex`,
  `select_att_key_id`, `get_supported_att_key_ids`, ...), mapping errorCode to sgx_status_t exactly as
  sgx_uae_service.cpp does (§3.3) and raising `SgxError`;
- `QuoteProvider`: `target_info()` + `get_quote(report)`, retrying transient failures (socket missing,
  refused, reset mid-reply, AESM_BUSY, service unavailable, attestation key not initialised -> re-init)
  with capped exponential backoff inside a caller-given deadline;
- `provider_from_env()`: out-of-process iff SGX_AESM_ADDR is present (its value is ignored, as in
  libsgx_dcap_ql and Open Enclave), in-process otherwise. A process uses one mode for its lifetime.
"""

from __future__ import annotations

import collections
import errno
import os
import random
import socket
import struct
import threading
import time
from collections.abc import Callable, Mapping
from typing import Protocol

from quotehelper.aesm import messages_pb2 as pb
from quotehelper.aesm.codes import AesmError, SgxStatus, aesm_name, sgx_name, sgx_status_for
from quotehelper.aesm.framing import FrameError, recv_frame, send_frame
from quotehelper.aesm.handlers import Dispatcher, handle
from quotehelper.errors import QuoteHelperError
from quotehelper.platform.engine import QuotingEngine
from quotehelper.sgx.structs import (
    ATT_KEY_ID_EXT_SIZE,
    DEFAULT_ECDSA_ATT_KEY_ID,
    QE_REPORT_INFO_SIZE,
    TARGET_INFO_SIZE,
    AttKeyId,
    Report,
    TargetInfo,
)

DEFAULT_SOCKET = "/var/run/aesmd/aesm.socket"
IPC_TIMEOUT_MS = 15000  # what libsgx_quote_ex puts in every request's timeout field (ignored by AESM)
IPC_TIMEOUT_S = IPC_TIMEOUT_MS / 1000


class SgxError(QuoteHelperError):
    """A failed call, as the application would see it from libsgx_quote_ex."""

    def __init__(self, call: str, status: SgxStatus, aesm_code: int | None = None, detail: str = "",
                 transport: bool = False) -> None:
        self.call = call
        self.status = status
        self.aesm_code = aesm_code
        self.transport = transport  # failed in the transport, not answered by the service
        why = f" ({aesm_name(aesm_code)})" if aesm_code is not None else ""
        super().__init__(f"{call}: {sgx_name(status)}{why}{': ' + detail if detail else ''}")

    @property
    def transient(self) -> bool:
        """Worth retrying: the service is restarting, busy, or lost its key state."""
        if self.transport:
            return self.status in (SgxStatus.ERROR_SERVICE_UNAVAILABLE, SgxStatus.ERROR_SERVICE_TIMEOUT,
                                   SgxStatus.ERROR_UNEXPECTED)
        return self.aesm_code in (AesmError.BUSY, AesmError.SERVICE_UNAVAILABLE, AesmError.SERVICE_STOPPED,
                                  AesmError.ATT_KEY_NOT_INITIALIZED)


class ModeConflict(QuoteHelperError):
    """This process already quotes in the other mode (in-process vs out-of-process)."""


# --- transports ---------------------------------------------------------------------------------------

class Transport(Protocol):
    def transact(self, call: str, req: pb.Request, timeout: float) -> pb.Response: ...


class SocketTransport:
    """One connection per call, as libsgx_quote_ex's SocketTransporter does (§1.5, §1.7)."""

    def __init__(self, path: str = DEFAULT_SOCKET) -> None:
        self.path = path

    def transact(self, call: str, req: pb.Request, timeout: float = IPC_TIMEOUT_S) -> pb.Response:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(max(timeout, 0.001))
        try:
            try:
                s.connect(self.path)
            except OSError as e:
                raise SgxError(call, SgxStatus.ERROR_SERVICE_UNAVAILABLE, detail=f"connect {self.path}: {e}",
                               transport=True) from e
            try:
                send_frame(s, req.SerializeToString())
                payload = recv_frame(s)
            except TimeoutError as e:
                raise SgxError(call, SgxStatus.ERROR_SERVICE_TIMEOUT, detail="no reply in time",
                               transport=True) from e
            except (OSError, FrameError) as e:
                status = (SgxStatus.ERROR_SERVICE_UNAVAILABLE
                          if isinstance(e, OSError) and e.errno == errno.EPIPE else SgxStatus.ERROR_UNEXPECTED)
                raise SgxError(call, status, detail=f"connection failed mid-call: {e}", transport=True) from e
        finally:
            s.close()
        res = pb.Response()
        try:
            res.ParseFromString(payload)
        except Exception as e:
            raise SgxError(call, SgxStatus.ERROR_UNEXPECTED, detail=f"unparseable reply: {e}") from e
        return res


class InProcessTransport:
    """The service's own handlers, run on an engine loaded in this process (no socket)."""

    def __init__(self, engine: QuotingEngine) -> None:
        self.engine = engine
        self.dispatcher = Dispatcher(engine.supported_att_key_ids())
        self._lock = threading.Lock()  # engines are opened once per process, not per thread

    def transact(self, call: str, req: pb.Request, timeout: float = IPC_TIMEOUT_S) -> pb.Response:
        with self._lock:
            res = handle(self.dispatcher, self.engine, req)
        if res is None:
            raise SgxError(call, SgxStatus.ERROR_UNEXPECTED, detail="request not answered")
        return res


# --- the quote-ex calls -------------------------------------------------------------------------------

_RES_FIELD = {"init_quote_ex": "initQuoteExRes", "get_quote_size_ex": "getQuoteSizeExRes",
              "get_quote_ex": "getQuoteExRes", "select_att_key_id": "selectAttKeyIDRes",
              "get_supported_att_key_id_num": "getSupportedAttKeyIDNumRes",
              "get_supported_att_key_ids": "getSupportedAttKeyIDsRes"}


def _key_bytes(att_key_id: AttKeyId | bytes) -> bytes:
    return att_key_id.to_bytes() if isinstance(att_key_id, AttKeyId) else bytes(att_key_id)


class AesmClient:
    """libsgx_quote_ex's API; each method is one IPC. Failures raise SgxError with the sgx_status_t."""

    def __init__(self, transport: Transport, timeout: float = IPC_TIMEOUT_S) -> None:
        self.transport = transport
        self.timeout = timeout

    def _call(self, call: str, req: pb.Request, timeout: float | None) -> object:
        res = self.transport.transact(call, req, self.timeout if timeout is None else timeout)
        field = _RES_FIELD[call]
        if not res.HasField(field):
            raise SgxError(call, SgxStatus.ERROR_UNEXPECTED, detail=f"reply lacks {field}")
        sub = getattr(res, field)
        if sub.errorCode != AesmError.SUCCESS:
            raise SgxError(call, sgx_status_for(call, sub.errorCode), sub.errorCode)
        return sub

    def get_supported_att_key_id_num(self, timeout: float | None = None) -> int:
        req = pb.Request()
        req.getSupportedAttKeyIDNumReq.timeout = IPC_TIMEOUT_MS
        return self._call("get_supported_att_key_id_num", req, timeout).att_key_id_num  # type: ignore[attr-defined]

    def get_supported_att_key_ids(self, num: int | None = None, timeout: float | None = None) -> list[bytes]:
        if num is None:
            num = self.get_supported_att_key_id_num(timeout)
        if num <= 0:
            raise SgxError("get_supported_att_key_ids", SgxStatus.ERROR_INVALID_PARAMETER, detail="num must be > 0")
        req = pb.Request()
        req.getSupportedAttKeyIDsReq.buf_size = num * ATT_KEY_ID_EXT_SIZE
        req.getSupportedAttKeyIDsReq.timeout = IPC_TIMEOUT_MS
        ids = self._call("get_supported_att_key_ids", req, timeout).att_key_ids  # type: ignore[attr-defined]
        if len(ids) > num * ATT_KEY_ID_EXT_SIZE:
            raise SgxError("get_supported_att_key_ids", SgxStatus.ERROR_UNEXPECTED, detail="reply too long")
        return [ids[i:i + ATT_KEY_ID_EXT_SIZE] for i in range(0, len(ids), ATT_KEY_ID_EXT_SIZE)]

    def select_att_key_id(self, att_key_id_list: bytes | None = None, timeout: float | None = None) -> bytes:
        """`att_key_id_list` is a raw sgx_ql_att_key_id_list_t (None: any supported id)."""
        req = pb.Request()
        sub = req.selectAttKeyIDReq
        if att_key_id_list:
            sub.att_key_id_list = att_key_id_list
        sub.timeout = IPC_TIMEOUT_MS  # field 2 in this message
        sel = self._call("select_att_key_id", req, timeout).selected_att_key_id  # type: ignore[attr-defined]
        if len(sel) > ATT_KEY_ID_EXT_SIZE:
            raise SgxError("select_att_key_id", SgxStatus.ERROR_UNEXPECTED, detail="reply too long")
        return sel + bytes(ATT_KEY_ID_EXT_SIZE - len(sel))

    def init_quote_ex(self, att_key_id: AttKeyId | bytes = DEFAULT_ECDSA_ATT_KEY_ID,
                      pub_key_id_size: int | None = None,
                      timeout: float | None = None) -> tuple[bytes, int, bytes | None]:
        """One sgx_init_quote_ex: (target_info 512 bytes, pub_key_id_size, pub_key_id or None).

        pub_key_id_size None is the probe (no pub-key-id buffer); otherwise the buffer size (32).
        """
        r = self._call("init_quote_ex", init_quote_ex_request(att_key_id, pub_key_id_size), timeout)
        ti = r.target_info  # type: ignore[attr-defined]
        if len(ti) > TARGET_INFO_SIZE:
            raise SgxError("init_quote_ex", SgxStatus.ERROR_UNEXPECTED, detail="target_info too long")
        size = r.pub_key_id_size  # type: ignore[attr-defined]
        pkid = r.pub_key_id  # type: ignore[attr-defined]
        # libsgx_quote_ex copies pub_key_id only if it has exactly the announced size and fits the buffer.
        ok = pub_key_id_size is not None and r.HasField("pub_key_id") and len(pkid) == size <= pub_key_id_size  # type: ignore[attr-defined]
        return ti + bytes(TARGET_INFO_SIZE - len(ti)), size, (pkid if ok else None)

    def get_quote_size_ex(self, att_key_id: AttKeyId | bytes = DEFAULT_ECDSA_ATT_KEY_ID,
                          timeout: float | None = None) -> int:
        return self._call("get_quote_size_ex", get_quote_size_ex_request(att_key_id),
                          timeout).quote_size  # type: ignore[attr-defined]

    def get_quote_ex(self, report: bytes | Report, buf_size: int,
                     att_key_id: AttKeyId | bytes = DEFAULT_ECDSA_ATT_KEY_ID,
                     qe_report_info: bytes | None = None,
                     timeout: float | None = None) -> tuple[bytes, bytes | None]:
        """One sgx_get_quote_ex: (quote buffer of buf_size bytes, qe_report_info or None)."""
        if buf_size <= 0:
            raise SgxError("get_quote_ex", SgxStatus.ERROR_INVALID_PARAMETER, detail="buf_size must be > 0")
        if qe_report_info is not None and len(qe_report_info) != QE_REPORT_INFO_SIZE:
            raise SgxError("get_quote_ex", SgxStatus.ERROR_INVALID_PARAMETER, detail="qe_report_info is 960 bytes")
        r = self._call("get_quote_ex", get_quote_ex_request(report, buf_size, att_key_id, qe_report_info), timeout)
        quote = r.quote  # type: ignore[attr-defined]
        if len(quote) > buf_size:
            raise SgxError("get_quote_ex", SgxStatus.ERROR_UNEXPECTED, detail="quote longer than buffer")
        qri = r.qe_report_info if r.HasField("qe_report_info") else None  # type: ignore[attr-defined]
        return quote + bytes(buf_size - len(quote)), qri


def init_quote_ex_request(att_key_id: AttKeyId | bytes = DEFAULT_ECDSA_ATT_KEY_ID,
                          pub_key_id_size: int | None = None) -> pb.Request:
    """InitQuoteEx as libsgx_quote_ex sends it (pub_key_id_size None: the probe, no pub-key-id buffer)."""
    req = pb.Request()
    sub = req.initQuoteExReq
    sub.att_key_id = _key_bytes(att_key_id)
    sub.b_pub_key_id = pub_key_id_size is not None
    if pub_key_id_size:
        sub.buf_size = pub_key_id_size
    sub.timeout = IPC_TIMEOUT_MS
    return req


def get_quote_size_ex_request(att_key_id: AttKeyId | bytes = DEFAULT_ECDSA_ATT_KEY_ID) -> pb.Request:
    req = pb.Request()
    req.getQuoteSizeExReq.att_key_id = _key_bytes(att_key_id)
    req.getQuoteSizeExReq.timeout = IPC_TIMEOUT_MS
    return req


def get_quote_ex_request(report: bytes | Report, buf_size: int,
                         att_key_id: AttKeyId | bytes = DEFAULT_ECDSA_ATT_KEY_ID,
                         qe_report_info: bytes | None = None) -> pb.Request:
    """GetQuoteEx as libsgx_quote_ex sends it: the 432-byte REPORT, the quote buffer size in bytes."""
    req = pb.Request()
    sub = req.getQuoteExReq
    sub.report = report.to_bytes() if isinstance(report, Report) else bytes(report)
    sub.att_key_id = _key_bytes(att_key_id)
    if qe_report_info is not None:
        sub.qe_report_info = qe_report_info
    sub.buf_size = buf_size
    sub.timeout = IPC_TIMEOUT_MS
    return req


# --- high level: the provider an application uses -----------------------------------------------------

def quote_length(buf: bytes) -> int:
    """436 + signature_data_len: how Gramine trims a padded quote buffer."""
    (sig_len,) = struct.unpack_from("<I", buf, 432)
    return 436 + sig_len


class QuoteProvider:
    """target_info() and get_quote(report) over one transport, with retry inside a deadline."""

    mode = "abstract"

    def __init__(self, transport: Transport, att_key_id: AttKeyId = DEFAULT_ECDSA_ATT_KEY_ID,
                 deadline: float = 30.0, backoff: float = 0.02, max_backoff: float = 0.5) -> None:
        _claim_mode(self.mode)
        self.client = AesmClient(transport)
        self.att_key_id = att_key_id
        self.deadline = deadline
        self.backoff = backoff
        self.max_backoff = max_backoff
        self._target_info: TargetInfo | None = None
        self._pub_key_id: bytes | None = None
        self._lock = threading.Lock()
        self.retries = 0
        self.retry_reasons: collections.Counter[str] = collections.Counter()  # why we retried (metrics)

    def _retrying(self, op: Callable[[float], object], deadline: float | None, reinit_on_42: bool) -> object:
        end = time.monotonic() + (self.deadline if deadline is None else deadline)
        delay = self.backoff
        while True:
            remaining = end - time.monotonic()
            try:
                return op(min(IPC_TIMEOUT_S, max(remaining, 0.001)))
            except SgxError as e:
                if not e.transient or time.monotonic() + delay >= end:
                    raise
                if reinit_on_42 and e.aesm_code == AesmError.ATT_KEY_NOT_INITIALIZED:
                    self._target_info = None  # next attempt re-runs InitQuoteEx (a restarted service)
                self.retries += 1
                self.retry_reasons[aesm_name(e.aesm_code) if e.aesm_code is not None else sgx_name(e.status)] += 1
                time.sleep(delay * (0.5 + random.random()))  # jitter: restarts see thundering herds
                delay = min(delay * 2, self.max_backoff)

    def _init(self, timeout: float) -> TargetInfo:
        # The two-step InitQuoteEx libsgx_dcap_ql does: probe for the pub-key-id size, then the real call.
        _, size, _ = self.client.init_quote_ex(self.att_key_id, None, timeout)
        if size != 32:
            raise SgxError("init_quote_ex", SgxStatus.ERROR_UNEXPECTED, detail=f"pub_key_id_size {size} != 32")
        ti, _, pkid = self.client.init_quote_ex(self.att_key_id, size, timeout)
        self._target_info, self._pub_key_id = TargetInfo.parse(ti), pkid
        return self._target_info

    def target_info(self, deadline: float | None = None) -> TargetInfo:
        """The QE's target info (InitQuoteEx probe + real call); cached."""
        with self._lock:
            if self._target_info is None:
                self._retrying(self._init, deadline, reinit_on_42=False)
            assert self._target_info is not None
            return self._target_info

    @property
    def pub_key_id(self) -> bytes | None:
        return self._pub_key_id

    def get_quote(self, report: bytes | Report, deadline: float | None = None,
                  qe_report_info: bytes | None = None) -> bytes:
        """The quote for an app REPORT targeted at target_info(): exact length, padding removed.

        A REPORT the QE cannot verify (MAC_MISMATCH) is not retried: only the app can make another. The
        cached target info is dropped then, because the usual cause in a working app is a QE that changed
        under an update (another QE version or CPUSVN gives it another report key), so the app's next
        target_info() asks the service again. `get_quote_for` does that round trip itself."""
        raw = report.to_bytes() if isinstance(report, Report) else bytes(report)

        def attempt(timeout: float) -> bytes:
            if self._target_info is None:
                self._init(timeout)
            size = self.client.get_quote_size_ex(self.att_key_id, timeout)
            buf, _ = self.client.get_quote_ex(raw, size, self.att_key_id, qe_report_info, timeout)
            return buf[:quote_length(buf)]

        try:
            return self._retrying(attempt, deadline, reinit_on_42=True)  # type: ignore[return-value]
        except SgxError as e:
            if e.status == SgxStatus.ERROR_MAC_MISMATCH:
                self._target_info = None
            raise

    def get_quote_for(self, make_report: Callable[[TargetInfo], bytes | Report], deadline: float | None = None,
                      qe_report_info: bytes | None = None) -> bytes:
        """target_info() -> `make_report` (the enclave's EREPORT) -> get_quote, remaking the report once
        against a fresh target info if the QE could not verify it (a QE updated under the app)."""
        try:
            return self.get_quote(make_report(self.target_info(deadline)), deadline, qe_report_info)
        except SgxError as e:
            if e.status != SgxStatus.ERROR_MAC_MISMATCH:
                raise
            self.retries += 1
            self.retry_reasons["AESM_INVALID_REPORT"] += 1
            return self.get_quote(make_report(self.target_info(deadline)), deadline, qe_report_info)


class OutOfProcessProvider(QuoteProvider):
    mode = "out-of-process"

    def __init__(self, socket_path: str = DEFAULT_SOCKET, **kw: object) -> None:
        super().__init__(SocketTransport(socket_path), **kw)  # type: ignore[arg-type]
        self.socket_path = socket_path


class InProcessProvider(QuoteProvider):
    mode = "in-process"

    def __init__(self, engine: QuotingEngine, **kw: object) -> None:
        super().__init__(InProcessTransport(engine), **kw)  # type: ignore[arg-type]


_mode_lock = threading.Lock()
_process_mode: str | None = None


def _claim_mode(mode: str) -> None:
    global _process_mode
    with _mode_lock:
        if _process_mode is None:
            _process_mode = mode
        elif _process_mode != mode:
            raise ModeConflict(f"this process already quotes {_process_mode}; it cannot also quote {mode} "
                               "(set or unset SGX_AESM_ADDR before the first quote, not in between)")


def process_mode() -> str | None:
    return _process_mode


def reset_process_mode() -> None:
    """Forget the mode (tests only; a real application picks one mode for its lifetime)."""
    global _process_mode
    with _mode_lock:
        _process_mode = None


def provider_from_env(engine_factory: Callable[[], QuotingEngine] | None = None,
                      socket_path: str | None = None, env: Mapping[str, str] | None = None,
                      **kw: object) -> QuoteProvider:
    """Out-of-process iff SGX_AESM_ADDR is set (any value, even empty); else the engine in this process.

    The socket path is AESM's fixed one unless `socket_path` is given (tests, non-default deployments).
    """
    env = os.environ if env is None else env
    if "SGX_AESM_ADDR" in env:
        return OutOfProcessProvider(socket_path or DEFAULT_SOCKET, **kw)
    if engine_factory is None:
        raise QuoteHelperError("SGX_AESM_ADDR is not set, so quoting is in-process, but no engine was given "
                               "(pass --platform DIR, or set SGX_AESM_ADDR to use the quote service)")
    return InProcessProvider(engine_factory(), **kw)
