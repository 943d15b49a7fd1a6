"""`verify --batch DIR`: every quote file in a folder, collateral fetched once per (TEE, FMSPC, CA),
verified on `--jobs` processes (fork; each keeps a warm Verifier), one JSON line per quote in file order."""

from __future__ import annotations

import json
import multiprocessing
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from quotehelper.cli.common import read_binary_or_hex as _read_quote_file
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


def _init_worker(settings: BatchSettings) -> None:
    roots = tuple(TrustAnchor.from_bytes(d) for d in settings.roots_der)
    _worker["verifier"] = Verifier(VerifyOptions(trusted_roots=roots, now=settings.now, policy=settings.policy))


def _verify_chunk(chunk: tuple[dict[Any, Collateral], list[tuple[int, str, Any, bytes | None]]]
                  ) -> list[tuple[int, str, str, int, bool]]:
    """(index, path, the JSON line, exit code, not a quote) per quote: the worker makes the line, so the
    parent, which shares the CPUs, only writes it."""
    verifier: Verifier = _worker["verifier"]
    collaterals, items = chunk
    out = []
    for i, path, key, raw in items:
        try:
            v = verifier.verify(raw if raw is not None else _read_quote_file(Path(path)), collaterals[key])
        except VerificationError as e:
            v = Verdict(valid=False, error=e)
        except OSError as e:
            line = json.dumps({"file": path, "valid": False, "error": {"code": "UNREADABLE", "message": str(e)}})
            out.append((i, path, line, EXIT_INPUT, False))
            continue
        skip = v.error is not None and v.error.code is ErrorCode.NOT_A_QUOTE
        out.append((i, path, "" if skip else json.dumps({"file": path, **v.to_dict()}), v.exit_code(), skip))
    return out


@dataclass
class _Plan:
    """What the reading side found besides quotes to verify (filled as it goes, read at the end)."""

    rows: list[str] = field(default_factory=list)   # JSON lines for quotes that were not verified
    codes: list[int] = field(default_factory=list)
    not_quotes: int = 0


class _NothingFetched(Exception):
    """Stands in for PcsError when every collateral comes from a file."""


def _chunks(files: list[Path], owns: set[str], collateral: Collateral | None, client: Any, plan: _Plan
            ) -> Iterator[tuple[dict[Any, Collateral], list[tuple[int, str, Any, bytes | None]]]]:
    """Reads the quotes and yields them in chunks with the collateral each needs: NAME.collateral.json
    beside it, else --collateral, else fetched once per (TEE, FMSPC, CA). A generator, so the workers
    verify while the files are still being read."""
    PcsError: type[Exception] = _NothingFetched
    if client is not None:  # quotehelper.pcs (~50 ms of imports) only when something is fetched
        from quotehelper.pcs import PcsError
        from quotehelper.pcs.needs import needs_for

    colls: dict[Any, Collateral] = {}
    failed: dict[Any, PcsError] = {}
    items: list[tuple[int, str, Any, bytes | None]] = []
    for i, path in enumerate(files):
        quote: bytes | None = None
        try:
            if path.name + ".collateral.json" in owns:
                own = path.with_name(path.name + ".collateral.json")
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
                plan.not_quotes += 1
                continue
            v = Verdict(valid=False, error=e)
            plan.rows.append(json.dumps({"file": str(path), **v.to_dict()}))
            plan.codes.append(v.exit_code())
            continue
        except PcsError as e:
            plan.rows.append(json.dumps({"file": str(path), "valid": False, "error": e.to_dict()}))
            plan.codes.append(EXIT_INPUT)
            continue
        except OSError as e:
            plan.rows.append(json.dumps({"file": str(path), "valid": False,
                                         "error": {"code": "UNREADABLE", "message": str(e)}}))
            plan.codes.append(EXIT_INPUT)
            continue
        items.append((i, str(path), key, quote))
        if len(items) == _CHUNK:
            yield {k: colls[k] for k in {it[2] for it in items}}, items
            items = []
    if items:
        yield {k: colls[k] for k in {it[2] for it in items}}, items


def _listing(directory: Path) -> tuple[list[Path], set[str]]:
    """The files to verify, by name, and the names of the NAME.collateral.json files (a quote's own
    collateral): one directory read (scandir's entry types, no stat per file and no Path comparisons: a
    3,000-file listing is then ~5 ms, not ~60)."""
    names: list[str] = []
    owns: set[str] = set()
    with os.scandir(directory) as it:
        for e in it:
            if not e.is_file():
                continue
            if _suffix(e.name) not in SKIP_SUFFIXES:
                names.append(e.name)
            elif e.name.endswith(".collateral.json"):
                owns.add(e.name)
    return [directory / n for n in sorted(names)], owns


def _suffix(name: str) -> str:
    """Path(name).suffix, lower-cased ("..json" -> ".json", where os.path.splitext finds none)."""
    i = name.rfind(".")
    return name[i:].lower() if 0 < i < len(name) - 1 else ""


def run_batch(directory: Path, out: Any, settings: BatchSettings, *, collateral: Collateral | None,
              client: Any, jobs: int) -> int:
    files, owns = _listing(directory)
    plan = _Plan()
    counts = {"accepted": 0, "rejected": 0, "invalid": 0, "not quotes": 0}
    codes: list[int] = []

    def results() -> Iterator[list[tuple[int, str, str, int, bool]]]:
        chunks = _chunks(files, owns, collateral, client, plan)
        if jobs <= 1 or len(files) <= _CHUNK:
            _init_worker(settings)
            yield from map(_verify_chunk, chunks)
            return
        ctx = multiprocessing.get_context("fork")
        with ctx.Pool(jobs, initializer=_init_worker, initargs=(settings,)) as pool:
            yield from pool.imap(_verify_chunk, chunks)

    with click.progressbar(length=len(files), label="verifying", file=sys.stderr, show_pos=True) as bar:
        for rows in results():
            for _, _path, line, code, skip in rows:
                if skip:
                    counts["not quotes"] += 1
                    continue
                codes.append(code)
                counts["accepted" if code == EXIT_OK else "rejected" if code == EXIT_POLICY else "invalid"] += 1
                out.write(line + "\n")
            bar.update(len(rows))
    for row in plan.rows:
        out.write(row + "\n")
    codes += plan.codes
    counts["invalid"] += len(plan.codes)
    counts["not quotes"] += plan.not_quotes
    skipped = f", {counts['not quotes']} files skipped (not quotes)" if counts["not quotes"] else ""
    click.echo(f"{len(codes)} quotes: {counts['accepted']} accepted, {counts['rejected']} rejected by policy, "
               f"{counts['invalid']} invalid{skipped}", err=True)
    for c in (EXIT_INVALID, EXIT_INPUT, EXIT_POLICY):
        if c in codes:
            return c
    return EXIT_OK
