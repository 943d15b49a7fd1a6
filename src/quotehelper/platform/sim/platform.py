"""SimPlatform: one simulated SGX machine (CPU, PCE, QE3, PCK certificate) in a directory.

Platform directory (0700; secrets 0600):
    platform.json           fmspc, TCB status + advisories, SVNs, PCE id, PPID, QE_ID, CA type, PKI dir
    cpu.secret              root secret ‖ owner epoch ‖ CPUSVN ‖ KEYID (80 bytes)
    pck.key.pem             PCK private key (used only by the simulated PCE)
    pck_chain.pem           PCK leaf ‖ PCK CA ‖ root (the quote's type-5 certification data)
    attestation_key.sealed  QE3 attestation key, AES-GCM sealed; made by the first init_quote

Export (`export(out_dir)`, `quotehelper sim export`), for verifiers:
    root_ca.pem, root_ca.der     the simulated SGX Root CA (the trust anchor)
    collateral.json              dcap-qvl QuoteCollateralV3 JSON (QuoteCollateralV3.from_json)
    pcs/tcb_info.json            PCS v4 body {"tcbInfo":…,"signature":…}
    pcs/qe_identity.json         PCS v4 body {"enclaveIdentity":…,"signature":…}
    pcs/pckcrl.der               PCK CRL of the platform's CA (processor or platform)
    pcs/rootcrl.der              Root CA CRL
    pcs/headers.json             {"TCB-Info-Issuer-Chain", "SGX-Enclave-Identity-Issuer-Chain",
                                  "SGX-PCK-CRL-Issuer-Chain"}: URL-encoded PEM, as PCS sends them
    pcs/<header name>.txt        each of those three header values alone (same URL-encoded text)
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives.asymmetric import ec

from quotehelper.errors import QuoteHelperError
from quotehelper.platform.sim.cpu import EnclaveIdentity, SimCpu
from quotehelper.platform.sim.enclave import SimEnclave
from quotehelper.platform.sim.qe import Pce, Qe3Engine
from quotehelper.platform.sim.store import (
    PlatformStoreError,
    atomic_create_dir,
    ensure_dir,
    load_private_key_pem,
    private_key_pem,
    read_private,
    write_atomic,
)
from quotehelper.sgx.pck import SGX_TYPE_SCALABLE, SGX_TYPE_STANDARD, PckConfiguration, PckExtension
from quotehelper.sgx.structs import DEFAULT_ECDSA_ATT_KEY_ID, FLAG_INITTED, FLAG_MODE64BIT, Attributes

# The PKI and collateral modules (X.509 building) load only where a method needs them: opening a platform
# to quote, what every worker process of the service does, needs neither (~3 MB less per worker).
if TYPE_CHECKING:
    from cryptography import x509

    from quotehelper.platform.sim.collateral import Collateral
    from quotehelper.platform.sim.pki import SimPki

DEFAULT_FMSPC = bytes.fromhex("00906ED50000")
DEFAULT_PCE_SVN = 13
DEFAULT_PCE_ID = bytes(2)
DEFAULT_QE_SVN = 8  # at least the QE identity's UpToDate ISVSVN (a test keeps the two in step)
DEFAULT_APP_MRENCLAVE = hashlib.sha256(b"quotehelper simulated app enclave").digest()
DEFAULT_APP_MRSIGNER = hashlib.sha256(b"quotehelper simulated app signer").digest()
_FORMAT = 1


class SimConfigError(QuoteHelperError, ValueError):
    """A bad option for creating a simulated platform (unknown TCB status, FMSPC size, ...)."""


def default_platform_dir() -> Path:
    """$QUOTEHELPER_PLATFORM, else $XDG_DATA_HOME/quotehelper/platform (~/.local/share/...)."""
    if os.environ.get("QUOTEHELPER_PLATFORM"):
        return Path(os.environ["QUOTEHELPER_PLATFORM"])
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "quotehelper" / "platform"


class SimPlatform:
    def __init__(self, platform_dir: Path, config: dict, cpu: SimCpu, pck_key: ec.EllipticCurvePrivateKey,
                 pck_chain_pem: bytes) -> None:
        self.platform_dir = Path(platform_dir)
        self.config = config
        self.cpu = cpu
        self._pck_key = pck_key
        self.pck_chain_pem = pck_chain_pem
        self._engine: Qe3Engine | None = None
        self._pki: SimPki | None = None

    # ---- create / open -----------------------------------------------------------------------------
    @classmethod
    def create(cls, platform_dir: Path, *, pki_dir: Path | None = None, tcb_status: str = "UpToDate",
               fmspc: bytes | None = None, sdk_compatible: bool = False, advisory_ids: list[str] | None = None,
               ca: str = "processor", qe_svn: int = DEFAULT_QE_SVN, pce_svn: int = DEFAULT_PCE_SVN,
               pcs_url: str | None = None) -> SimPlatform:
        """Creates the platform (and its PKI if needed, its CRL distribution points under `pcs_url`) and
        registers it with the simulated PCS's state in the PKI. Idempotent: an existing platform is
        opened as is."""
        from quotehelper.platform.sim.collateral import DEFAULT_ADVISORIES, TCB_STATUSES
        from quotehelper.platform.sim.pki import CA_PLATFORM, CA_TYPES, SimPki, _pem

        platform_dir = Path(platform_dir).absolute()
        if (platform_dir / "platform.json").exists():
            return cls.open(platform_dir)
        if tcb_status not in TCB_STATUSES:
            raise SimConfigError(f"unknown TCB status {tcb_status!r}; choose one of {', '.join(TCB_STATUSES)}")
        fmspc = DEFAULT_FMSPC if fmspc is None else bytes(fmspc)
        if len(fmspc) != 6:
            raise SimConfigError(f"FMSPC must be 6 bytes, got {len(fmspc)}")
        if ca not in CA_TYPES:
            raise SimConfigError(f"PCK CA must be one of {', '.join(CA_TYPES)}, got {ca!r}")
        if not 1 <= pce_svn < 0xFFFF or not 0 <= qe_svn <= 0xFFFF:
            raise SimConfigError("PCE SVN must be 1..65534 and QE SVN 0..65535")
        advisories = DEFAULT_ADVISORIES[tcb_status] if advisory_ids is None else list(advisory_ids)
        pki_dir = Path(pki_dir).absolute() if pki_dir is not None else platform_dir.parent / "pki"
        pki = SimPki.load_or_create(pki_dir, pcs_url)

        def populate(tmp: Path) -> None:
            cpu = SimCpu.sdk_compatible() if sdk_compatible else SimCpu.random()
            pck_key = ec.generate_private_key(ec.SECP256R1())
            ext = PckExtension(
                ppid=os.urandom(16), tcb_components=tuple(cpu.cpu_svn), pcesvn=pce_svn, cpusvn=cpu.cpu_svn,
                pce_id=DEFAULT_PCE_ID, fmspc=fmspc,
                sgx_type=SGX_TYPE_SCALABLE if ca == CA_PLATFORM else SGX_TYPE_STANDARD,
                platform_instance_id=os.urandom(16) if ca == CA_PLATFORM else None,
                configuration=PckConfiguration(False, False, False) if ca == CA_PLATFORM else None)
            leaf = pki.issue_pck(pck_key.public_key(), ext, ca)
            config = {"format": _FORMAT, "fmspc": fmspc.hex().upper(), "tcb_status": tcb_status,
                      "advisory_ids": advisories, "ca": ca, "pki_dir": str(pki_dir), "qe_svn": qe_svn,
                      "pce_svn": pce_svn, "pce_id": DEFAULT_PCE_ID.hex(), "ppid": ext.ppid.hex(),
                      "qe_id": os.urandom(16).hex(), "sdk_compatible": sdk_compatible}
            write_atomic(tmp / "cpu.secret", cpu.to_bytes(), private=True)
            write_atomic(tmp / "pck.key.pem", private_key_pem(pck_key), private=True)
            write_atomic(tmp / "pck_chain.pem", _pem(leaf) + pki.pck_issuer_chain_pem(ca))
            write_atomic(tmp / "platform.json", json.dumps(config, indent=1).encode())

        if not atomic_create_dir(platform_dir, populate) and not (platform_dir / "platform.json").exists():
            raise SimConfigError(f"{platform_dir} exists, is not empty and is not a simulated platform")
        platform = cls.open(platform_dir)
        with contextlib.suppress(ValueError):  # same FMSPC + TCB as another platform, other status: unregistered
            platform.register()
        return platform

    def register(self) -> None:
        """Registers this platform with the simulated PCS state of its PKI (what Intel's registration
        service does for a real one); the PCS then serves its PCK certificate and its FMSPC's TCB info."""
        from quotehelper.platform.sim.tcbeval import encrypted_ppid, register_platform

        c = self.config
        record = {"qe_id": c["qe_id"].upper(), "pce_id": c["pce_id"].upper(), "ppid": c["ppid"],
                  "encrypted_ppid": encrypted_ppid(bytes.fromhex(c["ppid"])).hex().upper(),
                  "cpusvn": self.cpu.cpu_svn.hex().upper(), "pcesvn": int(c["pce_svn"]), "fmspc": c["fmspc"],
                  "ca": c["ca"], "pck_chain": self.pck_chain_pem.decode()}
        register_platform(self.pki_dir, record, status=self.tcb_status, advisories=self.advisory_ids)

    @classmethod
    def open(cls, platform_dir: Path) -> SimPlatform:
        platform_dir = Path(platform_dir).absolute()
        if not (platform_dir / "platform.json").exists():
            raise PlatformStoreError(f"no simulated platform at {platform_dir} (create one with "
                                     "`quotehelper sim init`)")
        try:
            config = json.loads((platform_dir / "platform.json").read_text())
            if config.get("format") != _FORMAT:
                raise ValueError(f"unknown platform format {config.get('format')!r}")
            cpu = SimCpu.from_bytes(read_private(platform_dir / "cpu.secret"))
            pck_key = load_private_key_pem(read_private(platform_dir / "pck.key.pem"))
            chain = (platform_dir / "pck_chain.pem").read_bytes()
            return cls(platform_dir, config, cpu, pck_key, chain)
        except (OSError, ValueError, KeyError) as e:
            raise PlatformStoreError(f"simulated platform at {platform_dir} is corrupt: {e}") from e

    # ---- properties --------------------------------------------------------------------------------
    @functools.cached_property
    def pck_cert(self) -> x509.Certificate:
        from cryptography import x509

        return x509.load_pem_x509_certificate(self.pck_chain_pem)

    @property
    def fmspc(self) -> bytes:
        return bytes.fromhex(self.config["fmspc"])

    @property
    def tcb_status(self) -> str:
        return self.config["tcb_status"]

    @property
    def advisory_ids(self) -> list[str]:
        return list(self.config["advisory_ids"])

    @property
    def ca(self) -> str:
        return self.config["ca"]

    @property
    def qe_id(self) -> bytes:
        return bytes.fromhex(self.config["qe_id"])

    @property
    def pki_dir(self) -> Path:
        """The PKI recorded at creation; if that path is gone (platform and PKI moved together, e.g.
        mounted elsewhere in a container), the platform's sibling `pki` directory."""
        recorded = Path(self.config["pki_dir"])
        sibling = self.platform_dir.parent / "pki"
        return sibling if not recorded.exists() and (sibling / "root_ca.pem").exists() else recorded

    @property
    def pki(self) -> SimPki:
        if self._pki is None:
            from quotehelper.platform.sim.pki import SimPki

            self._pki = SimPki.load(self.pki_dir)
        return self._pki

    # ---- enclaves and quoting ----------------------------------------------------------------------
    def enclave(self, mr_enclave: bytes | None = None, mr_signer: bytes | None = None, isv_prod_id: int = 0,
                isv_svn: int = 0, attributes: Attributes | None = None, misc_select: int = 0,
                config_id: bytes = bytes(64), config_svn: int = 0) -> SimEnclave:
        """An app enclave on this platform (default: INIT|MODE64BIT, xfrm 0x3, not debug)."""
        ident = EnclaveIdentity(
            mr_enclave=DEFAULT_APP_MRENCLAVE if mr_enclave is None else mr_enclave,
            mr_signer=DEFAULT_APP_MRSIGNER if mr_signer is None else mr_signer, isv_prod_id=isv_prod_id,
            isv_svn=isv_svn, attributes=attributes or Attributes(FLAG_INITTED | FLAG_MODE64BIT, 0x3),
            misc_select=misc_select, config_id=config_id, config_svn=config_svn)
        return SimEnclave(self.cpu, ident)

    def engine(self) -> Qe3Engine:
        """The platform's QE3 (one per SimPlatform object; cheap to make in each worker process)."""
        if self._engine is None:
            pce = Pce(self.cpu, int(self.config["pce_svn"]), self._pck_key)
            self._engine = Qe3Engine(cpu=self.cpu, qe_svn=int(self.config["qe_svn"]), pce=pce, qe_id=self.qe_id,
                                     pck_chain_pem=self.pck_chain_pem,
                                     key_path=self.platform_dir / "attestation_key.sealed")
        return self._engine

    def quote(self, report_data: bytes, enclave: SimEnclave | None = None) -> bytes:
        """In-process quoting: init_quote, EREPORT for the QE, get_quote."""
        eng = self.engine()
        qe_target, _ = eng.init_quote(DEFAULT_ECDSA_ATT_KEY_ID)
        report = (enclave or self.enclave()).report(qe_target, report_data)
        quote, _ = eng.get_quote(report.to_bytes(), DEFAULT_ECDSA_ATT_KEY_ID)
        return quote

    # ---- collateral and export ---------------------------------------------------------------------
    def collateral(self, now: dt.datetime | None = None) -> Collateral:
        """Fresh collateral signed by the PKI for this platform's FMSPC, TCB status and CA."""
        from quotehelper.platform.sim.collateral import issue_collateral
        from quotehelper.platform.sim.tcbeval import TcbStateError, evaluation

        status, advisories, number = self.tcb_status, self.advisory_ids, None
        if (self.pki_dir / "platforms" / f"{self.qe_id.hex().upper()}.json").exists():
            try:  # registered: the rating of the PCS's standard evaluation (it changes on a TCB recovery)
                ev = evaluation(self.pki_dir, self.fmspc)
                prof = ev.profile(self.cpu.cpu_svn, int(self.config["pce_svn"]))
                if prof is not None:
                    status, advisories, number = prof.status, list(prof.advisories), ev.number
            except TcbStateError:
                pass
        return issue_collateral(self.pki, ca=self.ca, fmspc=self.fmspc, pce_id=bytes.fromhex(self.config["pce_id"]),
                                components=self.cpu.cpu_svn, pcesvn=int(self.config["pce_svn"]),
                                status=status, advisory_ids=advisories, now=now,
                                **({"number": number} if number is not None else {}))

    def root_ca_der(self) -> bytes:
        return self.pki.root_ca_der()

    def root_ca_pem(self) -> bytes:
        return self.pki.root_ca_pem()

    def export(self, out_dir: Path, now: dt.datetime | None = None) -> list[Path]:
        """Writes the trust anchor and fresh collateral (see the module docstring); returns the files."""
        out_dir = Path(out_dir)
        coll = self.collateral(now)
        files = {
            "root_ca.pem": self.root_ca_pem(), "root_ca.der": self.root_ca_der(),
            "collateral.json": coll.to_dcap_qvl_json().encode(),
            "pcs/tcb_info.json": coll.tcb_info_body().encode(),
            "pcs/qe_identity.json": coll.qe_identity_body().encode(),
            "pcs/pckcrl.der": coll.pck_crl, "pcs/rootcrl.der": coll.root_ca_crl,
            "pcs/headers.json": json.dumps(coll.pcs_headers(), indent=1).encode(),
        }
        # Each header also alone in a file named after it (what a saved PCS response folder looks like).
        files.update({f"pcs/{name}.txt": value.encode() for name, value in coll.pcs_headers().items()})
        ensure_dir(out_dir / "pcs")
        written = []
        for name, data in files.items():
            write_atomic(out_dir / name, data, replace=True)
            written.append(out_dir / name)
        return written

    def __repr__(self) -> str:
        return (f"SimPlatform({str(self.platform_dir)!r}, fmspc={self.config['fmspc']}, "
                f"tcb_status={self.tcb_status}, ca={self.ca})")
