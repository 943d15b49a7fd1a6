"""RA-TLS: attested TLS between workloads (CCC interoperable format, TCG DICE evidence 2.23.133.5.4.9).

cert (key -> claims -> quote -> certificate), verify (a peer's certificate -> PeerVerdict), tls
(pyOpenSSL contexts whose verify callback runs `RatlsVerifier` inside the handshake), collateral (the
pluggable "collateral for this quote" source), formats (OIDs, CBOR, tolerant X.509 reading).
"""

from quotehelper.ratls.cert import Credentials, Quoter, make_certificate, platform_quoter, provider_quoter
from quotehelper.ratls.collateral import CollateralSource, FileCollateral, FirstOf, StaticCollateral
from quotehelper.ratls.errors import RatlsCode, RatlsError
from quotehelper.ratls.options import RatlsOptions
from quotehelper.ratls.verify import PeerVerdict, RatlsVerifier

__all__ = [
    "CollateralSource", "Credentials", "FileCollateral", "FirstOf", "PeerVerdict", "Quoter", "RatlsCode",
    "RatlsError", "RatlsOptions", "RatlsVerifier", "StaticCollateral", "make_certificate", "platform_quoter",
    "provider_quoter",
]
