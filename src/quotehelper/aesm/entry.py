"""Process entry points of the quote service: `python -m quotehelper.aesm.entry service|worker ARGS`.

Both processes run asyncio on Unix sockets and never speak TLS, yet `import asyncio` loads the `ssl`
module and with it the system OpenSSL: 6 MB resident per process (measured: a worker 40 -> 34 MB,
the supervisor 22 -> 16 MB). So asyncio is imported here first, with `ssl` marked unavailable (asyncio
handles a Python built without ssl); the marker is removed right after, so an engine that needs `ssl`
still imports it normally.
"""

from __future__ import annotations

import sys


def import_asyncio_without_ssl() -> None:
    if "asyncio" in sys.modules or "ssl" in sys.modules:
        return
    sys.modules["ssl"] = None  # type: ignore[assignment]  # `import ssl` raises ImportError meanwhile
    try:
        import asyncio  # noqa: F401
    finally:
        del sys.modules["ssl"]


def main(argv: list[str]) -> None:
    import_asyncio_without_ssl()
    if argv[:1] == ["service"]:
        from quotehelper.aesm.service import main as service_main
        service_main(argv[1:])
    elif argv[:1] == ["worker"]:
        from quotehelper.aesm.workers import worker_entry
        worker_entry(argv[1:])
    else:
        sys.exit("usage: python -m quotehelper.aesm.entry service|worker ARGS")


if __name__ == "__main__":
    main(sys.argv[1:])
