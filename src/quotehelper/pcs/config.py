"""Where the collateral service is, by the conventions SGX operators already follow.

`default_pccs_url()`: `$PCCS_URL` (dcap-qvl's variable), else `pccs_url` in the QCNL configuration
(`$QCNL_CONF_PATH`, else `/etc/sgx_default_qcnl.conf`): JSON with `//` comments, or the legacy
`PCCS_URL=...` lines (collateral-service.md §3.1). `collateral_service`, when the file sets it, is where
QCNL fetches collateral, so it wins over `pccs_url` here too.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from quotehelper.pcs.errors import PcsCode, PcsError

QCNL_CONF = Path("/etc/sgx_default_qcnl.conf")
_LINE_COMMENT = re.compile(r'("(?:[^"\\]|\\.)*")|//[^\n]*')


def read_qcnl_conf(path: Path) -> dict:
    """The QCNL configuration as a dict (keys as in the file). Raises PcsError(BAD_OPTION) when it is
    JSON that does not parse (QCNL's 0xE067)."""
    text = path.read_text(encoding="utf-8", errors="replace")
    if text.lstrip().startswith("{"):
        try:
            conf = json.loads(_LINE_COMMENT.sub(lambda m: m.group(1) or "", text))
        except ValueError as e:
            raise PcsError(PcsCode.BAD_OPTION, f"{path} is not valid JSON ({e}); QCNL would refuse it too "
                           "(0xE067)", {"file": str(path)}) from e
        return conf if isinstance(conf, dict) else {}
    conf: dict = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and not key.strip().startswith("#"):
            conf[key.strip().lower()] = value.strip()
    return conf


def default_pccs_url(environ: dict[str, str] | None = None, conf_path: Path | None = None) -> str | None:
    env = os.environ if environ is None else environ
    if env.get("PCCS_URL"):
        return env["PCCS_URL"]
    path = conf_path or Path(env.get("QCNL_CONF_PATH") or QCNL_CONF)
    if not path.is_file():
        return None
    conf = read_qcnl_conf(path)
    url = conf.get("collateral_service") or conf.get("pccs_url")
    return url if isinstance(url, str) and url else None
