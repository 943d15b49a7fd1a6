"""One logging setup for every command and for the processes they start (standard library only: the
service supervisor imports it).

Format and level travel in the environment (`QUOTEHELPER_LOG_FORMAT` = text | json,
`QUOTEHELPER_LOG_LEVEL` = a logging level name), so a service that execs its workers or a webhook in a
pod logs the same way as the command that started it. JSON lines carry `time` (ISO 8601 UTC),
`level`, `logger`, `message`, and `exception` when there is one.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time

FORMATS = ("text", "json")
FORMAT_ENV = "QUOTEHELPER_LOG_FORMAT"
LEVEL_ENV = "QUOTEHELPER_LOG_LEVEL"
_TEXT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {"time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
                       + f".{int(record.msecs):03d}Z",
               "level": record.levelname, "logger": record.name, "message": record.getMessage()}
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out)


def level_for(verbose: int, quiet: bool = False, default: int = logging.WARNING) -> int:
    """-q: errors only; nothing: `default`; -v: INFO; -vv: DEBUG."""
    if quiet:
        return logging.ERROR
    if verbose >= 2:
        return logging.DEBUG
    return logging.INFO if verbose == 1 else default


def level_from_env(default: int) -> int:
    """The more verbose of `default` and the level a parent command exported (QUOTEHELPER_LOG_LEVEL)."""
    env = logging.getLevelName(os.environ.get(LEVEL_ENV, ""))
    return min(default, env) if isinstance(env, int) else default


def configure(level: int | None = None, fmt: str | None = None, *, export: bool = False) -> None:
    """Configures the root logger on stderr. `None` takes the value from the environment (else WARNING,
    text). `export=True` writes both back to the environment for child processes."""
    if level is None:
        level = logging.getLevelName(os.environ.get(LEVEL_ENV, "WARNING"))
        level = level if isinstance(level, int) else logging.WARNING
    fmt = fmt or os.environ.get(FORMAT_ENV, "text")
    if fmt not in FORMATS:
        fmt = "text"
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(_TEXT))
    handler.set_name("quotehelper")
    root = logging.getLogger()
    for h in list(root.handlers):  # ours from an earlier call, and basicConfig's; others (pytest's) stay
        if h.get_name() == "quotehelper" or type(h) is logging.StreamHandler:
            root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(level)
    if export:
        os.environ[FORMAT_ENV] = fmt
        os.environ[LEVEL_ENV] = logging.getLevelName(level)
