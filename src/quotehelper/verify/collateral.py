"""Quote collateral: the model, and loaders for dcap-qvl's JSON and for raw Intel PCS v4 responses.

The signed JSON texts (`tcb_info`, `qe_identity`) are kept as the exact bytes that were signed: a PCS
body `{"tcbInfo":<signed>,"signature":"<hex>"}` is cut at the value's span, never re-serialised.
Nothing here checks signatures or dates; that is chain.py / tcb.py.
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
import urllib.parse
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from quotehelper.inputs import InputTypeError, PathLike, as_path
from quotehelper.verify.errors import ErrorCode, VerificationError

_PEM_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.S)
_DCAP_QVL_KEYS = ("pck_crl_issuer_chain", "root_ca_crl", "pck_crl", "tcb_info_issuer_chain", "tcb_info",
                  "tcb_info_signature", "qe_identity_issuer_chain", "qe_identity", "qe_identity_signature")


def _bad(message: str, **detail: Any) -> VerificationError:
    return VerificationError(ErrorCode.COLLATERAL_MALFORMED, message, detail)


def decode_issuer_chain(value: str | bytes) -> bytes:
    """A PCS issuer-chain header value (URL-encoded PEM, as PCS sends it) or plain PEM -> PEM bytes."""
    text = value.decode("ascii", "replace") if isinstance(value, bytes) else value
    text = text.strip()
    if "-----BEGIN%20" in text:
        text = urllib.parse.unquote(text)
    pem = text.encode()
    if not _PEM_CERT.search(pem):
        raise _bad("issuer chain holds no PEM certificate")
    return pem


def split_pem_chain(pem: bytes, what: str) -> list[bytes]:
    certs = _PEM_CERT.findall(pem)
    if not certs:
        raise _bad(f"{what}: no PEM certificate", field=what)
    return certs


def crl_to_der(data: bytes, what: str) -> bytes:
    """Accepts a CRL as DER, PEM, or hex text (dcap-qvl JSON) and returns DER."""
    if data[:1] == b"\x30":
        return data  # DER (never strip: trailing bytes of DER may look like whitespace)
    raw = data.strip()
    if raw.startswith(b"-----BEGIN X509 CRL-----"):
        try:
            return x509.load_pem_x509_crl(raw).public_bytes(serialization.Encoding.DER)
        except ValueError as e:
            raise _bad(f"{what}: not a PEM CRL: {e}", field=what) from e
    if re.fullmatch(rb"[0-9a-fA-F]+", raw or b"x"):
        raw = bytes.fromhex(raw.decode())
    if raw[:1] != b"\x30":
        raise _bad(f"{what}: not a DER/PEM/hex CRL", field=what)
    return raw


def _encodable(s: str) -> bool:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _json_object(text: str | bytes | bytearray) -> dict[str, Any]:
    """JSON text -> dict, every failure a COLLATERAL_MALFORMED that says what was given instead."""
    if isinstance(text, bytes | bytearray):
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError as e:  # json.loads would guess UTF-16/32 and report codec internals
            raise _bad(f"not JSON: binary data at byte {e.start} (a quote or DER file given as collateral?)") from e
    try:
        d = json.loads(text)
    except RecursionError as e:
        raise _bad("not usable JSON: nested too deeply") from e
    except ValueError as e:  # JSONDecodeError, or an integer beyond Python's digit limit
        where = f" at line {e.lineno} column {e.colno}" if isinstance(e, json.JSONDecodeError) else ""
        raise _bad(f"not JSON{where}: {getattr(e, 'msg', 'unreadable value')}") from e
    if not isinstance(d, dict):
        raise _bad(f"collateral JSON must be an object, not {type(d).__name__}")
    return d


def _signature_bytes(value: Any, what: str) -> bytes:
    if not isinstance(value, str) or not re.fullmatch(r"[0-9a-fA-F]{128}", value):
        raise _bad(f"{what}: signature must be 128 hex digits (r||s)", field=what)
    return bytes.fromhex(value)


def top_level_spans(text: str) -> dict[str, tuple[int, int]]:
    """Character spans of each top-level value of a JSON object, so a signed member can be cut out
    byte-exactly. Raises ValueError on anything but a JSON object."""
    dec = json.JSONDecoder()
    ws = " \t\r\n"
    i = len(text) - len(text.lstrip(ws))
    if text[i:i + 1] != "{":
        raise ValueError("not a JSON object")
    i += 1
    spans: dict[str, tuple[int, int]] = {}
    while True:
        while text[i:i + 1] in tuple(ws) and i < len(text):
            i += 1
        if text[i:i + 1] == "}" and not spans:
            return spans
        key, i = dec.raw_decode(text, i)
        if not isinstance(key, str):
            raise ValueError("object key is not a string")
        while text[i:i + 1] in tuple(ws) and i < len(text):
            i += 1
        if text[i:i + 1] != ":":
            raise ValueError(f"expected ':' at {i}")
        i += 1
        while text[i:i + 1] in tuple(ws) and i < len(text):
            i += 1
        _, end = dec.raw_decode(text, i)
        spans[key] = (i, end)
        i = end
        while text[i:i + 1] in tuple(ws) and i < len(text):
            i += 1
        if text[i:i + 1] == ",":
            i += 1
            continue
        if text[i:i + 1] == "}":
            if text[i + 1:].strip(ws):
                raise ValueError("data after the JSON object")
            return spans
        raise ValueError(f"expected ',' or '}}' at {i}")


def split_signed_body(body: bytes | str, member: str, what: str) -> tuple[bytes, bytes]:
    """A PCS body {"<member>": {...}, "signature": "<hex>"} -> (exact signed bytes, 64-byte r||s)."""
    try:
        text = body.decode("utf-8") if isinstance(body, bytes) else body
        spans = top_level_spans(text)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise _bad(f"{what}: not a JSON object: {e}", field=what) from e
    if member not in spans or "signature" not in spans:
        raise _bad(f"{what}: body needs '{member}' and 'signature'", field=what, keys=sorted(spans))
    s, e = spans[member]
    ss, se = spans["signature"]
    return text[s:e].encode("utf-8"), _signature_bytes(json.loads(text[ss:se]), f"{what}.signature")


@dataclass(frozen=True)
class Collateral:
    """The nine items of dcap-qvl's QuoteCollateralV3 (+ optional PCK chain for cert-data types 1-4).

    Chains are PEM (issuer first, root last), CRLs DER, signed JSON as the exact signed bytes,
    signatures 64-byte r||s.
    """

    pck_crl_issuer_chain: bytes
    root_ca_crl: bytes
    pck_crl: bytes
    tcb_info_issuer_chain: bytes
    tcb_info: bytes
    tcb_info_signature: bytes
    qe_identity_issuer_chain: bytes
    qe_identity: bytes
    qe_identity_signature: bytes
    pck_certificate_chain: bytes | None = None
    source: str = field(default="", compare=False)

    @cached_property
    def content_hash(self) -> bytes:
        """SHA-256 over every item, length-prefixed: the cache key for parsed + verified collateral."""
        h = hashlib.sha256(b"quotehelper-collateral-v1")
        for item in (self.pck_crl_issuer_chain, self.root_ca_crl, self.pck_crl, self.tcb_info_issuer_chain,
                     self.tcb_info, self.tcb_info_signature, self.qe_identity_issuer_chain, self.qe_identity,
                     self.qe_identity_signature, self.pck_certificate_chain or b""):
            h.update(struct.pack("<Q", len(item)))
            h.update(item)
        return h.digest()

    # ---- dcap-qvl QuoteCollateralV3 JSON -------------------------------------------------------
    @classmethod
    def from_dcap_qvl_json(cls, text: str | bytes, source: str = "") -> Collateral:
        """dcap-qvl's QuoteCollateralV3 as JSON text (UTF-8 bytes or str): nine string members (chains PEM,
        CRLs hex DER, signed JSON as text, signatures 128 hex digits) and an optional
        `pck_certificate_chain`. Raises VerificationError(COLLATERAL_MALFORMED) naming the member."""
        if not isinstance(text, str | bytes | bytearray):
            raise InputTypeError("collateral JSON", f"expected str or bytes, got {type(text).__name__}")
        d = _json_object(text)
        missing = [k for k in _DCAP_QVL_KEYS if k not in d]
        if missing:
            raise _bad("dcap-qvl collateral misses keys", missing=missing)
        for k in _DCAP_QVL_KEYS + ("pck_certificate_chain",):
            if k in _DCAP_QVL_KEYS and d[k] is None:
                raise _bad(f"{k} is null", field=k)
            if k in d and d[k] is not None and not isinstance(d[k], str):
                raise _bad(f"{k} must be a string", field=k)
            if isinstance(d.get(k), str) and not _encodable(d[k]):
                raise _bad(f"{k} holds a lone surrogate (not UTF-8 text)", field=k)

        def hexbytes(k: str) -> bytes:
            try:
                return bytes.fromhex(d[k])
            except ValueError as e:
                raise _bad(f"{k} is not hex", field=k) from e

        def chain(k: str) -> bytes:
            pem = d[k].encode()
            if b"-----BEGIN CERTIFICATE-----" not in pem:
                raise _bad(f"{k}: no PEM certificate", field=k)
            return pem

        pck_chain = d.get("pck_certificate_chain")
        return cls(
            pck_crl_issuer_chain=chain("pck_crl_issuer_chain"),
            root_ca_crl=crl_to_der(hexbytes("root_ca_crl"), "root_ca_crl"),
            pck_crl=crl_to_der(hexbytes("pck_crl"), "pck_crl"),
            tcb_info_issuer_chain=chain("tcb_info_issuer_chain"),
            tcb_info=d["tcb_info"].encode("utf-8"),
            tcb_info_signature=_signature_bytes(d["tcb_info_signature"], "tcb_info_signature"),
            qe_identity_issuer_chain=chain("qe_identity_issuer_chain"),
            qe_identity=d["qe_identity"].encode("utf-8"),
            qe_identity_signature=_signature_bytes(d["qe_identity_signature"], "qe_identity_signature"),
            pck_certificate_chain=pck_chain.encode() if pck_chain else None,
            source=source,
        )

    def to_dcap_qvl_json(self) -> str:
        d: dict[str, str] = {
            "pck_crl_issuer_chain": self.pck_crl_issuer_chain.decode(), "root_ca_crl": self.root_ca_crl.hex(),
            "pck_crl": self.pck_crl.hex(), "tcb_info_issuer_chain": self.tcb_info_issuer_chain.decode(),
            "tcb_info": self.tcb_info.decode("utf-8"), "tcb_info_signature": self.tcb_info_signature.hex(),
            "qe_identity_issuer_chain": self.qe_identity_issuer_chain.decode(),
            "qe_identity": self.qe_identity.decode("utf-8"),
            "qe_identity_signature": self.qe_identity_signature.hex(),
        }
        if self.pck_certificate_chain:
            d["pck_certificate_chain"] = self.pck_certificate_chain.decode()
        return json.dumps(d)

    # ---- raw PCS v4 responses ----------------------------------------------------------------
    @classmethod
    def from_pcs(cls, *, tcb_info_body: bytes | str, tcb_info_issuer_chain: str | bytes,
                 qe_identity_body: bytes | str, qe_identity_issuer_chain: str | bytes | None = None,
                 pck_crl: bytes, pck_crl_issuer_chain: str | bytes, root_ca_crl: bytes,
                 pck_certificate_chain: bytes | None = None, source: str = "") -> Collateral:
        """From PCS v4 responses: bodies as received, issuer-chain header values as received (URL-encoded
        PEM) or decoded PEM. `qe_identity_issuer_chain` defaults to the TCB-info one (same signer)."""
        tcb, tcb_sig = split_signed_body(tcb_info_body, "tcbInfo", "tcb_info_body")
        qe, qe_sig = split_signed_body(qe_identity_body, "enclaveIdentity", "qe_identity_body")
        tcb_chain = decode_issuer_chain(tcb_info_issuer_chain)
        return cls(
            pck_crl_issuer_chain=decode_issuer_chain(pck_crl_issuer_chain),
            root_ca_crl=crl_to_der(root_ca_crl, "root_ca_crl"), pck_crl=crl_to_der(pck_crl, "pck_crl"),
            tcb_info_issuer_chain=tcb_chain, tcb_info=tcb, tcb_info_signature=tcb_sig,
            qe_identity_issuer_chain=(decode_issuer_chain(qe_identity_issuer_chain)
                                      if qe_identity_issuer_chain else tcb_chain),
            qe_identity=qe, qe_identity_signature=qe_sig,
            pck_certificate_chain=pck_certificate_chain, source=source,
        )

    @classmethod
    def from_pcs_dir(cls, directory: PathLike) -> Collateral:
        """A folder of saved PCS responses. Files are recognised by content, header files by name:
        TCB info body ({"tcbInfo":..}), QE identity body ({"enclaveIdentity":{"id":"QE"..}}), two CRLs
        (the one issued by the root is the root CA CRL), and issuer chains: files named after the PCS
        header (`TCB-Info-Issuer-Chain`, `SGX-Enclave-Identity-Issuer-Chain`, `SGX-PCK-CRL-Issuer-Chain`,
        any case, `-`/`_`, optional extension), else recognised by the first certificate (TCB Signing
        -> TCB chain; a CA -> PCK CRL chain). A PEM file whose first certificate carries the SGX
        extension is the PCK certificate (chain)."""
        return _PcsDir(as_path(directory, "collateral directory")).load()


def _norm(name: str) -> str:
    return re.sub(r"[^a-z]", "", name.lower())


class _PcsDir:
    def __init__(self, directory: Path) -> None:
        if not directory.is_dir():
            raise _bad(f"{directory} is not a directory")
        self.dir = directory

    def load(self) -> Collateral:
        try:
            return self._load()
        except VerificationError:
            raise
        except OSError as e:
            raise _bad(f"{self.dir}: cannot read: {e.strerror or e}") from e
        except (ValueError, RecursionError) as e:  # a file that looked like JSON / PEM / DER but is not
            raise _bad(f"{self.dir}: a file is not the collateral it looks like ({type(e).__name__})") from e

    def _load(self) -> Collateral:
        tcb_body = qe_body = None
        crls: list[x509.CertificateRevocationList] = []
        chains: dict[str, bytes] = {}
        pck_chain: bytes | None = None
        for path in sorted(p for p in self.dir.iterdir() if p.is_file()):
            data = path.read_bytes()
            name = _norm(path.name)
            head = data.lstrip()[:64]
            for hdr, key in (("tcbinfoissuerchain", "tcb"), ("enclaveidentityissuerchain", "qe"),
                             ("pckcrlissuerchain", "pck_crl")):
                if hdr in name:
                    chains.setdefault(key, decode_issuer_chain(data))
                    break
            else:
                if head.startswith(b"{"):
                    spans_text = data.decode("utf-8", "replace")
                    if '"tcbInfo"' in spans_text[:32]:
                        tcb_body = data
                    elif '"enclaveIdentity"' in spans_text[:32]:
                        ident = json.loads(data).get("enclaveIdentity", {})
                        if isinstance(ident, dict) and ident.get("id", "QE") == "QE":
                            qe_body = data
                elif head.startswith(b"-----BEGIN X509 CRL") or head.startswith(b"\x30"):
                    try:
                        crls.append(x509.load_der_x509_crl(crl_to_der(data, path.name)))
                    except (ValueError, VerificationError):
                        continue
                elif b"-----BEGIN CERTIFICATE-----" in data or b"-----BEGIN%20CERTIFICATE" in data:
                    pem = decode_issuer_chain(data)
                    key = self._classify_chain(pem)
                    if key == "pck_cert":
                        pck_chain = pem
                    elif key:
                        chains.setdefault(key, pem)
        if tcb_body is None or qe_body is None:
            raise _bad(f"{self.dir}: needs a TCB info body and a QE identity body")
        if "tcb" not in chains or "pck_crl" not in chains:
            raise _bad(f"{self.dir}: needs the TCB-Info and SGX-PCK-CRL issuer chains", found=sorted(chains))
        root_crl, pck_crl = self._split_crls(crls, chains["pck_crl"])
        if pck_chain is not None and len(split_pem_chain(pck_chain, "pck_cert")) == 1:
            pck_chain = pck_chain.rstrip() + b"\n" + chains["pck_crl"]  # leaf + PCK CA + root
        return Collateral.from_pcs(
            tcb_info_body=tcb_body, tcb_info_issuer_chain=chains["tcb"], qe_identity_body=qe_body,
            qe_identity_issuer_chain=chains.get("qe"), pck_crl=pck_crl, pck_crl_issuer_chain=chains["pck_crl"],
            root_ca_crl=root_crl, pck_certificate_chain=pck_chain, source=str(self.dir))

    @staticmethod
    def _classify_chain(pem: bytes) -> str | None:
        certs = [x509.load_pem_x509_certificate(c) for c in split_pem_chain(pem, "chain")]
        first = certs[0]
        if first.subject == first.issuer:
            return None  # a lone root: trust comes from --root-ca, not from a file in the folder
        oids = {e.oid.dotted_string for e in first.extensions}
        if "1.2.840.113741.1.13.1" in oids:
            return "pck_cert"
        try:
            is_ca = first.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        except x509.ExtensionNotFound:
            is_ca = False
        return "pck_crl" if is_ca else "tcb"

    @staticmethod
    def _split_crls(crls: list[x509.CertificateRevocationList], pck_crl_chain: bytes) -> tuple[bytes, bytes]:
        certs = [x509.load_pem_x509_certificate(c) for c in split_pem_chain(pck_crl_chain, "pck_crl_chain")]
        root_names = {c.subject for c in certs if c.subject == c.issuer}
        der = serialization.Encoding.DER
        unique = {c.public_bytes(der): c for c in crls}.values()  # the same CRL saved as .der and .pem
        root = [c for c in unique if c.issuer in root_names]
        other = [c for c in unique if c.issuer not in root_names and c.issuer == certs[0].subject]
        if len(root) != 1 or len(other) != 1:
            raise _bad("need exactly one root CA CRL and one PCK CRL issued by the PCK CRL chain's CA",
                       root_crls=len(root), pck_crls=len(other))
        return root[0].public_bytes(der), other[0].public_bytes(der)


def load_collateral(path: PathLike) -> Collateral:
    """A dcap-qvl QuoteCollateralV3 JSON file, or a folder of saved PCS v4 responses (see from_pcs_dir).

    `path` is a str or os.PathLike. Raises VerificationError(COLLATERAL_MALFORMED) for unreadable or
    malformed collateral, InputTypeError for a path of another type."""
    path = as_path(path, "collateral path")
    if path.is_dir():
        return Collateral.from_pcs_dir(path)
    try:
        text = path.read_bytes()
    except OSError as e:
        raise _bad(f"cannot read {path}: {e}") from e
    return Collateral.from_dcap_qvl_json(text, source=str(path))
