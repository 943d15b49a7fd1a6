"""`verify --batch DIR`: every quote file in a folder, collateral fetched once per (TEE, FMSPC, CA),
verified on `--jobs` processes (fork; each keeps a warm Verifier), one JSON line per quote in file order."""

from __future__ import annotations

import json
import multiprocessing
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from quotehelper.cli.inspect_cmd import _read_quote_file
from quotehelper.cli.verify_cmd import EXIT_INPUT, EXIT_INVALID, EXIT_OK, EXIT_POLICY
from quotehelper.verify import (
    Collateral,
    ErrorCode,
    Policy,
    TrustAnchor,
    VerificationError,
    Verifier,
    VerifyOptions,
)
from quotehelper.verify.collateral import load_collateral
from quotehelper.verify.quote_checks import load_quote
from quotehelper.verify.verdict import Verdict

SKIP_SUFFIXES = {".json", ".pem", ".der", ".crl", ".md", ".txt", ".yaml", ".yml", ".jsonl"}
_CHUNK = 64


@dataclass(frozen=True)
class BatchSettings:
    roots_der: tuple[bytes, ...]
    now: Any
    policy: Policy | None


_worker: dict[str, Any] = {}


def _init_worker(settings: BatchSettings, collaterals: dict[Any, Collateral]) -> None:
    roots = tuple(TrustAnchor.from_bytes(d) for d in settings.roots_der)
    _worker["verifier"] = Verifier(VerifyOptions(trusted_roots=roots, now=settings.now, policy=settings.policy))
    _worker["collaterals"] = collaterals


def _verify_chunk(chunk: list[tuple[int, str, Any, bytes | None]]) -> list[tuple[int, str, dict, int, bool]]:
    verifier: Verifier = _worker["verifier"]
    out = []
    for i, path, key, raw in chunk:
        coll = _worker["collaterals"][key]
        try:
            v = verifier.verify(raw if raw is not None else _read_quote_file(Path(path)), coll)
        except VerificationError as e:
            v = Verdict(valid=False, error=e)
        except OSError as e:
            out.append((i, path, {"error": {"code": "UNREADABLE", "message": str(e)}}, EXIT_INPUT, False))
            continue
        skip = v.error is not None and v.error.code is ErrorCode.NOT_A_QUOTE
        out.append((i, path, v.to_dict(), v.exit_code(), skip))
    return out


def _collateral_keys(files: list[Path], collateral: Collateral | None, client: Any,
                     out: Any) -> tuple[list[tuple[int, str, Any, bytes | None]], dict[Any, Collateral], list[int], int]:
    """Which collateral each quote uses: NAME.collateral.json beside it, else --collateral, else fetched
    once per (TEE, FMSPC, CA). Quotes whose collateral cannot be had get an error line now."""
    from quotehelper.pcs import PcsError
    from quotehelper.pcs.needs import needs_for

    jobs: list[tuple[int, str, Any, bytes | None]] = []  # the bytes when read already (sent, not re-read)
    colls: dict[Any, Collateral] = {}
    codes: list[int] = []
    skipped: list[str] = []
    failed: dict[Any, PcsError] = {}
    for i, path in enumerate(files):
        own = path.with_name(path.name + ".collateral.json")
        quote: bytes | None = None
        try:
            if own.is_file():
                key: Any = str(own)
                colls.setdefault(key, load_collateral(own))
            elif collateral is not None:
                key = "--collateral"
                colls[key] = collateral
            else:
                quote = _read_quote_file(path)
                try:
                    needs = needs_for(quote)
                except PcsError:
                    load_quote(quote)  # not a quote (skipped) or a damaged one (invalid, exit 1), as with --collateral
                    raise
                key = (needs.tee, needs.fmspc, needs.ca) if needs.fmspc else ("quote", str(path))
                if key in failed:
                    raise failed[key]
                if key not in colls:
                    try:
                        colls[key] = client.fetch(quote).collateral
                    except PcsError as e:
                        failed[key] = e
                        raise
        except VerificationError as e:  # from load_quote: not a quote (skipped), or a damaged one
            if e.code is ErrorCode.NOT_A_QUOTE:
                skipped.append(str(path))
                continue
            v = Verdict(valid=False, error=e)
            out.write(json.dumps({"file": str(path), **v.to_dict()}) + "\n")
            codes.append(v.exit_code())
            continue
        except PcsError as e:
            out.write(json.dumps({"file": str(path), "valid": False, "error": e.to_dict()}) + "\n")
            codes.append(EXIT_INPUT)
            continue
        except OSError as e:
            click.echo(f"error: cannot read {path}: {e}", err=True)
            codes.append(EXIT_INPUT)
            continue
        jobs.append((i, str(path), key, quote))
    return jobs, colls, codes, len(skipped)


def run_batch(directory: Path, out: Any, settings: BatchSettings, *, collateral: Collateral | None,
              client: Any, jobs: int) -> int:
    files = sorted(p for p in directory.iterdir() if p.is_file() and p.suffix.lower() not in SKIP_SUFFIXES
                   and not p.name.endswith(".collateral.json"))
    work, colls, codes, not_quotes = _collateral_keys(files, collateral, client, out)
    chunks = [work[i:i + _CHUNK] for i in range(0, len(work), _CHUNK)]
    counts = {"accepted": 0, "rejected": 0, "invalid": len(codes), "not quotes": not_quotes}

    def results() -> Iterator[list[tuple[int, str, dict, int, bool]]]:
        if jobs <= 1 or len(chunks) <= 1:
            _init_worker(settings, colls)
            yield from map(_verify_chunk, chunks)
            return
        ctx = multiprocessing.get_context("fork")
        with ctx.Pool(jobs, initializer=_init_worker, initargs=(settings, colls)) as pool:
            yield from pool.imap(_verify_chunk, chunks)

    with click.progressbar(length=len(work), label="verifying", file=sys.stderr, show_pos=True) as bar:
        for rows in results():
            for _, path, verdict, code, skip in rows:
                bar.update(1)
                if skip:
                    counts["not quotes"] += 1
                    continue
                codes.append(code)
                counts["accepted" if code == EXIT_OK else "rejected" if code == EXIT_POLICY else "invalid"] += 1
                out.write(json.dumps({"file": path, **verdict}) + "\n")
    skipped = f", {counts['not quotes']} files skipped (not quotes)" if counts["not quotes"] else ""
    click.echo(f"{len(codes)} quotes: {counts['accepted']} accepted, {counts['rejected']} rejected by policy, "
               f"{counts['invalid']} invalid{skipped}", err=True)
    for c in (EXIT_INVALID, EXIT_INPUT, EXIT_POLICY):
        if c in codes:
            return c
    return EXIT_OK
