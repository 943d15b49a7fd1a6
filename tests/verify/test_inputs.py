"""Issue 11: the public verify API takes what users pass (str paths, unix seconds, hex quotes) and refuses
everything else with a typed error; the CLI answers every malformed input with a named error and exit 2."""

from __future__ import annotations

import json
import os
import time
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from click.testing import CliRunner

from quotehelper.cli import main
from quotehelper.inputs import InputError, InputTypeError, as_path, as_quote_bytes, as_utc, parse_time
from quotehelper.verify.collateral import Collateral, load_collateral
from quotehelper.verify.errors import ErrorCode, VerificationError
from quotehelper.verify.policy import Policy
from quotehelper.verify.trust import TrustAnchor
from quotehelper.verify.verifier import Verifier, VerifyOptions, verify
from tests.conftest import TESTDATA
from tests.verify.helpers import CASES, path

PHALA = CASES["phala"]
ROOT_PEM = str(TESTDATA / "intel-root/Intel_SGX_Root_CA.pem")
NULLABLE = ("pck_crl_issuer_chain", "root_ca_crl", "pck_crl", "tcb_info_issuer_chain", "tcb_info",
            "qe_identity_issuer_chain", "qe_identity")  # the 7 that crashed; the 2 signatures already did not


def run(*args: str | Path) -> tuple[int, str]:
    r = CliRunner().invoke(main, ["verify", *map(str, args)])
    assert r.exception is None or isinstance(r.exception, SystemExit), r.exception
    return r.exit_code, r.output


# ---- the shared helpers ---------------------------------------------------------------------------
def test_helpers_accept_the_user_spellings() -> None:
    assert as_path("a/b") == Path("a/b") and as_path(Path("c")) == Path("c")
    assert as_utc(1700000000) == datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)
    assert as_utc(0.5) == datetime(1970, 1, 1, 0, 0, 0, 500000, tzinfo=UTC)
    east = datetime(2024, 1, 1, 9, tzinfo=timezone(timedelta(hours=9)))
    assert as_utc(east) == datetime(2024, 1, 1, tzinfo=UTC) and as_utc(east).tzinfo is UTC
    assert as_quote_bytes("0xAB cd\n") == b"\xab\xcd" and as_quote_bytes(bytearray(b"q")) == b"q"
    assert parse_time("2024-01-01T00:00:00") == datetime(2024, 1, 1, tzinfo=UTC)  # CLI: no zone = UTC
    assert parse_time(" 1700000000 ") == datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)


@pytest.mark.parametrize(("fn", "value", "err", "text"), [
    (as_utc, datetime(2024, 1, 1), InputError, "naive datetime"),
    (as_utc, True, InputTypeError, "got bool"),
    (as_utc, "1700000000", InputTypeError, "got str"),
    (as_utc, 10**20, InputError, "outside the years"),
    (as_utc, float("nan"), InputError, "outside the years"),
    (parse_time, "99999999999999999999", InputError, "outside the years"),
    (parse_time, "yesterday", InputError, "neither unix seconds nor ISO 8601"),
    (as_path, b"root.pem", InputTypeError, "got bytes"),
    (as_path, None, InputTypeError, "got NoneType"),
    (as_path, "", InputError, "empty path"),
    (as_quote_bytes, "abc", InputError, "not hex"),
    (as_quote_bytes, "zz", InputError, "not hex"),
    (as_quote_bytes, 3, InputTypeError, "got int"),
], ids=["naive", "bool", "str-time", "huge", "nan", "huge-text", "words", "bytes-path", "none-path", "empty-path",
        "odd-hex", "non-hex", "int-quote"])
def test_helpers_refuse_with_typed_errors(fn, value, err, text) -> None:  # noqa: ANN001
    with pytest.raises(err, match=text) as e:
        fn(value)
    assert e.type is err  # the exact type: a TypeError for a wrong type, a ValueError for a bad value


# ---- the public API -------------------------------------------------------------------------------
def test_loaders_take_str_paths() -> None:
    """Why: TrustAnchor.from_file("root.pem"), load_collateral("c.json"), Policy.load("p.yaml") raised
    AttributeError on a str."""
    assert TrustAnchor.from_file(ROOT_PEM).sha256 == TrustAnchor.intel().sha256
    coll = load_collateral(str(path(PHALA.collateral)))
    assert isinstance(coll, Collateral) and coll.source == str(path(PHALA.collateral))
    with pytest.raises(InputTypeError, match="collateral path: expected a str or os.PathLike path, got bytes"):
        load_collateral(os.fsencode(path(PHALA.collateral)))  # type: ignore[arg-type]


def test_policy_load_takes_str(tmp_path: Path) -> None:
    p = tmp_path / "p.yaml"
    p.write_text("accepted_tcb_statuses: [UpToDate]\nallow_debug: true\n")
    assert Policy.load(str(p)) == Policy(accepted_tcb_statuses=("UpToDate",), allow_debug=True)


def test_verify_now_as_unix_seconds_datetime_and_hex() -> None:
    """Why: verifier.verify(..., now=int(time.time())) raised on unix seconds (the CLI's and dcap-qvl's
    convention). The same verdict for int, float, an aware datetime in any zone, bytes and hex text."""
    quote, coll = PHALA.quote_bytes(), PHALA.load()
    v = Verifier()
    east = datetime.fromtimestamp(PHALA.now, timezone(timedelta(hours=5, minutes=30)))
    verdicts = [v.verify(quote, coll, now=PHALA.now), v.verify(quote, coll, now=float(PHALA.now)),
                v.verify(quote, coll, now=east), v.verify(quote.hex(), coll, now=PHALA.now),
                Verifier(VerifyOptions(now=PHALA.now)).verify(quote, coll)]
    assert {(x.valid, x.status) for x in verdicts} == {(True, "ConfigurationAndSWHardeningNeeded")}
    # int(time.time()): the collateral has expired by now, which is a verdict (exit 2), not a crash
    assert v.verify(quote, coll, now=int(time.time())).error.code is ErrorCode.CRL_EXPIRED


def test_verify_refuses_a_naive_datetime() -> None:
    with pytest.raises(InputError, match="naive datetime"):
        Verifier().verify(PHALA.quote_bytes(), PHALA.load(), now=datetime(2025, 7, 4))
    with pytest.raises(InputError, match="naive datetime"):
        VerifyOptions(now=datetime(2025, 7, 4))


@pytest.mark.parametrize("given", ["str", "dict", "bytes"])
def test_collateral_of_the_wrong_type_is_an_error(given: str) -> None:
    """Why: collateral passed as a str or dict yielded a verdict with status None instead of an error."""
    text = path(PHALA.collateral).read_text()
    coll = {"str": text, "dict": json.loads(text), "bytes": text.encode()}[given]
    with pytest.raises(InputTypeError, match="expected a Collateral"):
        Verifier().verify(PHALA.quote_bytes(), coll, now=PHALA.now)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        verify(PHALA.quote_bytes(), coll, PHALA.now)  # type: ignore[arg-type]


def test_dcap_qvl_shaped_verify() -> None:
    v = verify(PHALA.quote_bytes(), PHALA.load(), PHALA.now)
    assert v.valid and v.status == "ConfigurationAndSWHardeningNeeded"
    assert v.advisory_ids == ("INTEL-SA-00289", "INTEL-SA-00615")
    c = CASES["custom-pki"]
    assert verify(c.quote_bytes(), c.load(), c.now).error.code is ErrorCode.ROOT_NOT_TRUSTED
    assert verify(c.quote_bytes(), c.load(), c.now, root_ca=TrustAnchor.from_file(str(TESTDATA / c.root))).valid


@pytest.mark.parametrize("key", NULLABLE)
def test_null_member_is_named(key: str) -> None:
    d = json.loads(path(PHALA.collateral).read_text())
    d[key] = None
    with pytest.raises(VerificationError, match=f"{key} is null") as e:
        Collateral.from_dcap_qvl_json(json.dumps(d))
    assert e.value.code is ErrorCode.COLLATERAL_MALFORMED


def test_root_ca_that_is_text_names_no_library_internals() -> None:
    with pytest.raises(VerificationError) as e:
        TrustAnchor.from_file(Path(__file__))
    assert e.value.code is ErrorCode.ROOT_CA_MALFORMED and "ParseError" not in str(e.value)
    assert str(e.value).endswith("not an X.509 certificate (DER or PEM)")


# ---- the CLI: every reproducer from the issue, exit code and message ------------------------------
def phala(quote: str | Path | None = None, collateral: str | Path | None = None, now: str | None = None,
          *extra: str | Path) -> tuple[int, str]:
    return run(quote or path(PHALA.quote), "--collateral", collateral or path(PHALA.collateral),
               "--now", now or str(PHALA.now), *extra)


@pytest.mark.parametrize("key", NULLABLE)
def test_cli_null_member_exit_2(tmp_path: Path, key: str) -> None:
    d = json.loads(path(PHALA.collateral).read_text())
    d[key] = None
    f = tmp_path / "c.json"
    f.write_text(json.dumps(d))
    code, out = phala(collateral=f)
    assert (code, out.strip()) == (2, f"error: COLLATERAL_MALFORMED: {key} is null")


def test_cli_deep_json_exit_2(tmp_path: Path) -> None:
    f = tmp_path / "deep.json"
    f.write_text("[" * 200_000 + "]" * 200_000)
    assert phala(collateral=f) == (2, "error: COLLATERAL_MALFORMED: not usable JSON: nested too deeply\n")


def test_cli_huge_now_exit_2() -> None:
    code, out = phala(now="99999999999999999999")
    assert code == 2 and "--now" in out and "outside the years 1..9999" in out and "Traceback" not in out


def test_cli_quote_given_as_collateral_names_no_codec(tmp_path: Path) -> None:
    for q in (path(PHALA.quote), path(CASES["automata-aug2025"].quote)):
        code, out = phala(collateral=q)
        assert code == 2 and "COLLATERAL_MALFORMED: not JSON: binary data" in out and "codec" not in out


def test_cli_text_root_ca_names_no_parse_error() -> None:
    code, out = phala(None, None, None, "--root-ca", Path(__file__).parents[2] / "README.md")
    assert code == 2 and "ROOT_CA_MALFORMED" in out and "ParseError" not in out


def test_cli_readme_as_quote_is_unusable_input() -> None:
    code, out = phala(quote=Path(__file__).parents[2] / "README.md")
    assert code == 2 and "CANNOT VERIFY NOT_A_QUOTE" in out
    code, out = phala(quote=Path(__file__))
    assert code == 2 and "NOT_A_QUOTE" in out


def test_cli_empty_and_short_files_are_not_quotes(tmp_path: Path) -> None:
    for data in (b"", b"\x03\x00\x02\x00", b"\0" * 2000):
        f = tmp_path / "q.dat"
        f.write_bytes(data)
        code, out = phala(quote=f)
        assert code == 2 and "NOT_A_QUOTE" in out, data[:8]


def test_cli_expired_collateral_says_cannot_verify_and_exits_2() -> None:
    """Why: expired collateral printed INVALID (the word for a bad quote) but exited 2."""
    code, out = phala(now=str(PHALA.now + 3 * 365 * 86400))
    assert code == 2 and "CANNOT VERIFY CRL_EXPIRED" in out and "INVALID" not in out


def test_cli_damaged_quote_stays_invalid_exit_1() -> None:
    q = bytearray(PHALA.quote_bytes())
    q[100] ^= 1
    assert Verifier().verify(bytes(q), PHALA.load(), now=PHALA.now).exit_code() == 1


def test_cli_batch_skips_files_that_are_not_quotes(tmp_path: Path) -> None:
    """Why: --batch DIR counted .py and .yaml files as invalid quotes."""
    (tmp_path / "a.dat").write_bytes(PHALA.quote_bytes())
    (tmp_path / "tool.py").write_text("print('hello')\n")
    (tmp_path / "values.yaml").write_text("a: 1\n")
    (tmp_path / "notes").write_text("some words, no quote\n")
    r = CliRunner().invoke(main, ["verify", "--batch", str(tmp_path), "--collateral", str(path(PHALA.collateral)),
                                  "--now", str(PHALA.now)])
    lines = [json.loads(x) for x in r.stdout.splitlines()]
    assert r.exit_code == 0 and [Path(x["file"]).name for x in lines] == ["a.dat"]
    assert "1 quotes: 1 accepted, 0 rejected by policy, 0 invalid, 2 files skipped (not quotes)" in r.stderr
