"""`pccs serve --config FILE`: a JSON file whose keys follow Intel's PCCS `config/default.json` where the
concept is the same (collateral-service.md §2.7), plus the few ours needs. Read once at start; a bad file
is a named error (exit 2), never a traceback.

| key | default | meaning |
|---|---|---|
| HTTPS_PORT | 8081 | listen port |
| hosts | 127.0.0.1 | bind address |
| uri | https://api.trustedservices.intel.com/sgx/certification/v4/ | upstream: Intel PCS, Azure THIM, another PCCS, or `quotehelper pcs serve` |
| ApiKey | "" | Intel PCS subscription key (sent on pckcerts/pckcert) |
| UserTokenHash / AdminTokenHash | "" | lower-case hex SHA-512 of the user / admin token ("" = every token fails) |
| CachingFillMode | LAZY | LAZY, REQ or OFFLINE |
| DB_CONFIG | sqlite | "sqlite" (the `sqlite.options.storage` file) or "postgres" (`postgres.url`) |
| ssl_cert / ssl_key | ssl_key/file.crt, ssl_key/private.pem (beside the config, as Intel's) | TLS files |
| plain_http | false | serve plain HTTP (behind a mesh that terminates TLS) |
| trusted_root | Intel's SGX Root CA | PEM/DER root every stored item must chain to (a test root for the simulated PCS) |
| upstream_ca_bundle / upstream_insecure | - / false | TLS trust for the upstream |
| refresh_interval_s | 3600 | each item is re-fetched at least this often (jittered), to see TCB recoveries early |
| refresh_ahead_s | 86400 | ... and this long before its own nextUpdate |
| LogLevel | info | error, warn, info, debug |
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from quotehelper.errors import QuoteHelperError

MODES = ("LAZY", "REQ", "OFFLINE")


class PccsConfigError(QuoteHelperError, ValueError):
    """The configuration file is unreadable or holds an unusable value (names the key)."""


def merge(base: dict, over: dict) -> dict:
    """`over`'s keys replace `base`'s; where both hold an object, the two are merged the same way."""
    out = dict(base)
    for k, v in over.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


@dataclass(frozen=True)
class PccsOptions:
    port: int = 8081
    hosts: str = "127.0.0.1"
    uri: str = "https://api.trustedservices.intel.com/sgx/certification/v4/"
    api_key: str = ""
    user_token_hash: str = ""
    admin_token_hash: str = ""
    mode: str = "LAZY"
    db_url: str = "sqlite:///pckcache.db"
    ssl_cert: Path | None = None
    ssl_key: Path | None = None
    plain_http: bool = False
    trusted_root: Path | None = None
    upstream_ca_bundle: str | None = None
    upstream_insecure: bool = False
    refresh_interval_s: float = 3600.0
    refresh_ahead_s: float = 86400.0
    upstream_timeout_s: float = 30.0
    log_level: str = "info"
    extra: dict = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise PccsConfigError(f"CachingFillMode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if not 0 <= self.port <= 65535:
            raise PccsConfigError(f"HTTPS_PORT must be 0..65535, got {self.port}")
        for name in ("user_token_hash", "admin_token_hash"):
            v = getattr(self, name)
            if v and (len(v) != 128 or any(c not in "0123456789abcdefABCDEF" for c in v)):
                raise PccsConfigError(f"{'UserTokenHash' if 'user' in name else 'AdminTokenHash'} must be the "
                                      "128 hex digits of a SHA-512")
        if self.refresh_interval_s <= 0 or self.refresh_ahead_s < 0:
            raise PccsConfigError("refresh_interval_s must be > 0 and refresh_ahead_s >= 0")

    @classmethod
    def load(cls, path: str | Path, *more: str | Path) -> PccsOptions:
        """`more`: files merged over the first, key by key (objects such as `postgres` merged too), e.g. the
        secrets (ApiKey, token hashes, postgres.url) from a Kubernetes Secret over a ConfigMap's settings.
        Relative paths in any of them are relative to the first file's directory."""
        conf: dict = {}
        for p in map(Path, (path, *more)):
            try:
                part = json.loads(p.read_text())
            except OSError as e:
                raise PccsConfigError(f"cannot read {p}: {e.strerror or e}") from e
            except ValueError as e:
                raise PccsConfigError(f"{p} is not valid JSON: {e}") from e
            if not isinstance(part, dict):
                raise PccsConfigError(f"{p} must hold a JSON object")
            conf = merge(conf, part)
        return cls.from_dict(conf, base=Path(path).parent)

    @classmethod
    def from_dict(cls, conf: dict, base: Path = Path(".")) -> PccsOptions:
        def get(key: str, kind: type | tuple[type, ...], default: object) -> object:
            v = conf.get(key)
            if v is None:  # absent or null: the default
                return default
            if (v is not None and not isinstance(v, kind)) or (kind is not bool and isinstance(v, bool)):
                name = kind.__name__ if isinstance(kind, type) else "a number"
                raise PccsConfigError(f"{key} must be {name}, got {type(v).__name__}")
            return v

        def path(key: str, default: str | None) -> Path | None:
            v = get(key, str, default)
            return None if not v else (base / str(v))

        db = get("DB_CONFIG", str, "sqlite")
        if db == "sqlite":
            sq = conf.get("sqlite") or {}
            storage = ((sq.get("options") or {}) if isinstance(sq, dict) else {}).get("storage", "pckcache.db")
            db_url = f"sqlite:///{(base / str(storage)).absolute()}"  # its directory is checked at start
        elif db in ("postgres", "postgresql"):
            pg = conf.get("postgres") or {}
            db_url = pg.get("url") if isinstance(pg, dict) else None
            if not isinstance(db_url, str) or not db_url.startswith("postgresql"):
                raise PccsConfigError("postgres.url must be a postgresql+psycopg://user:pass@host/db URL")
        else:
            raise PccsConfigError(f"DB_CONFIG must be sqlite or postgres, got {db!r}")
        return cls(
            port=int(get("HTTPS_PORT", int, 8081)), hosts=str(get("hosts", str, "127.0.0.1")),
            uri=str(get("uri", str, cls.uri)), api_key=str(get("ApiKey", str, "")),
            user_token_hash=str(get("UserTokenHash", str, "")).lower(),
            admin_token_hash=str(get("AdminTokenHash", str, "")).lower(),
            mode=str(get("CachingFillMode", str, "LAZY")).upper(), db_url=db_url,
            ssl_cert=path("ssl_cert", "ssl_key/file.crt"), ssl_key=path("ssl_key", "ssl_key/private.pem"),
            plain_http=bool(get("plain_http", bool, False)), trusted_root=path("trusted_root", None),
            upstream_ca_bundle=get("upstream_ca_bundle", str, None),  # type: ignore[arg-type]
            upstream_insecure=bool(get("upstream_insecure", bool, False)),
            refresh_interval_s=float(get("refresh_interval_s", (int, float), 3600.0)),  # type: ignore[arg-type]
            refresh_ahead_s=float(get("refresh_ahead_s", (int, float), 86400.0)),  # type: ignore[arg-type]
            log_level=str(get("LogLevel", str, "info")), extra=conf)
