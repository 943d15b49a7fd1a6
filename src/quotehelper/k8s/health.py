"""`quotehelper health`: is the node's quote service really usable? (startup/liveness/readiness probes)

Healthy only when the service answers on its socket exactly as libsgx_quote_ex would drive it
(InitQuoteEx probe + real call, GetQuoteSizeEx, GetQuoteEx) AND, on the software platform, a self-test
quote made through it for a fresh nonce verifies under the platform's root with freshly signed
collateral and carries that nonce. A socket that merely accepts connections is not enough (a wedged
worker pool, a lost attestation key or a broken signer must fail the probe).

On SGX hardware no Python process can make an EREPORT, so the check stops after GetQuoteSizeEx there.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass
from pathlib import Path

from quotehelper.aesm.client import AesmClient, SgxError, SocketTransport, quote_length
from quotehelper.errors import QuoteHelperError
from quotehelper.sgx.quote import parse_quote
from quotehelper.sgx.structs import DEFAULT_ECDSA_ATT_KEY_ID, TargetInfo

HEALTH_MR_ENCLAVE = hashlib.sha256(b"quotehelper health self-test enclave").digest()


class Unhealthy(QuoteHelperError):
    """The service failed a step of the health check; the message names the step."""


@dataclass(frozen=True)
class HealthReport:
    steps: tuple[str, ...]
    quote_size: int
    verified_status: str | None  # TCB status of the verified self-test quote (None: not quoted)
    seconds: float

    def summary(self) -> str:
        what = f"self-test quote verified ({self.verified_status})" if self.verified_status else \
            "no self-test quote (hardware engine)"
        return f"healthy: {', '.join(self.steps)}; {what}; {self.seconds * 1000:.0f} ms"


def check(socket_path: str, platform_dir: Path | None = None, timeout: float = 10.0) -> HealthReport:
    """Raises Unhealthy naming the failed step; returns what was checked."""
    t0 = time.monotonic()
    client = AesmClient(SocketTransport(socket_path), timeout=timeout)
    steps: list[str] = []

    def step(name: str, fn):
        try:
            out = fn()
        except SgxError as e:
            raise Unhealthy(f"{name} via {socket_path}: {e}") from e
        steps.append(name)
        return out

    key = DEFAULT_ECDSA_ATT_KEY_ID
    _, size, _ = step("init_quote_ex(probe)", lambda: client.init_quote_ex(key, None))
    ti, _, _ = step("init_quote_ex", lambda: client.init_quote_ex(key, size))
    quote_size = step("get_quote_size_ex", lambda: client.get_quote_size_ex(key))
    if platform_dir is None:
        return HealthReport(tuple(steps), quote_size, None, time.monotonic() - t0)

    from quotehelper.platform.sim import SimPlatform
    from quotehelper.verify import Collateral, TrustAnchor, Verifier, VerifyOptions

    plat = SimPlatform.open(platform_dir)
    nonce = hashlib.sha256(os.urandom(32)).digest() + bytes(32)
    report = plat.enclave(mr_enclave=HEALTH_MR_ENCLAVE).report(TargetInfo.parse(ti), nonce)
    buf, _ = step("get_quote_ex", lambda: client.get_quote_ex(report, quote_size, key))
    quote = buf[:quote_length(buf)]
    body = parse_quote(quote).report_body
    if body.report_data != nonce or body.mr_enclave != HEALTH_MR_ENCLAVE:
        raise Unhealthy("the self-test quote does not carry the self-test enclave's identity and nonce")
    collateral = Collateral.from_dcap_qvl_json(plat.collateral().to_dcap_qvl_json(), source="sim platform")
    verifier = Verifier(VerifyOptions(trusted_roots=(TrustAnchor.from_bytes(plat.root_ca_der()),)))
    verdict = verifier.verify(quote, collateral)
    if not verdict.valid:
        raise Unhealthy(f"the self-test quote does not verify: {verdict.error}")
    steps.append("verify")
    return HealthReport(tuple(steps), quote_size, verdict.status, time.monotonic() - t0)
