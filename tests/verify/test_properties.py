"""Issue 11, property tests (Hypothesis, derandomized so CI runs the same examples every time): whatever
collateral JSON, quote bytes or policy a user or attacker hands the verifier, the answer is a verdict or
a named VerificationError (exit 1 invalid / 2 unusable input), never another exception.

Examples per property are stated in each `settings`; together they run in a few seconds on one core."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from quotehelper.cli import main
from quotehelper.errors import FormatError
from quotehelper.platform.sim import SimPlatform
from quotehelper.platform.sim.collateral import signed_body
from quotehelper.sgx.describe import quote_dict
from quotehelper.sgx.quote import parse_quote
from quotehelper.verify.collateral import Collateral, split_signed_body
from quotehelper.verify.errors import ErrorCode, Kind, VerificationError
from quotehelper.verify.policy import Policy
from quotehelper.verify.trust import TrustAnchor
from quotehelper.verify.verifier import Verifier, VerifyOptions
from tests.verify.helpers import CASES, path

PHALA = CASES["phala"]
QUOTE = PHALA.quote_bytes()
BASE = json.loads(path(PHALA.collateral).read_text())
VERIFIER = Verifier()


def ci(n: int) -> settings:
    """Derandomized (a fixed sequence of examples), no per-example deadline (a shared CI box), n examples."""
    return settings(max_examples=n, derandomize=True, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.function_scoped_fixture])


json_leaf = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30)
json_value = st.recursive(json_leaf, lambda inner: st.lists(inner, max_size=3) |
                          st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=8)


def _mutate_text(draw: st.DrawFn, s: str) -> str:
    if not s:
        return draw(st.text(max_size=10))
    i = draw(st.integers(0, len(s) - 1))
    op = draw(st.sampled_from(["cut", "replace", "insert", "empty"]))
    if op == "cut":
        return s[:i]
    if op == "replace":
        return s[:i] + draw(st.text(min_size=1, max_size=4)) + s[i + 1:]
    if op == "insert":
        return s[:i] + draw(st.text(min_size=1, max_size=8)) + s[i:]
    return ""


@st.composite
def collateral_documents(draw: st.DrawFn) -> str | bytes:
    """The real collateral with members replaced, dropped or edited; arbitrary JSON; arbitrary bytes."""
    how = draw(st.sampled_from(["members", "edit", "text", "json", "bytes"]))
    if how == "bytes":
        return draw(st.binary(max_size=300))
    if how == "json":
        return json.dumps(draw(json_value))
    d = dict(BASE)
    for k in draw(st.lists(st.sampled_from(sorted(BASE)), min_size=1, max_size=3, unique=True)):
        if how == "members":
            if draw(st.booleans()):
                d[k] = draw(json_value)
            else:
                del d[k]
        else:
            d[k] = _mutate_text(draw, d[k]) if isinstance(d[k], str) else d[k]
    text = json.dumps(d)
    return _mutate_text(draw, text) if how == "text" else text


def _verdict_or_named_error(doc: str | bytes) -> None:
    try:
        coll = Collateral.from_dcap_qvl_json(doc)
    except VerificationError as e:
        assert e.code is ErrorCode.COLLATERAL_MALFORMED and e.kind is Kind.COLLATERAL
        return
    v = VERIFIER.verify(QUOTE, coll, now=PHALA.now)
    assert v.exit_code() in (0, 1, 2)
    assert v.valid or v.error is not None


@ci(300)
@given(collateral_documents())
def test_collateral_json_gives_a_verdict_or_a_named_error(doc: str | bytes) -> None:
    _verdict_or_named_error(doc)


@pytest.mark.parametrize("key", sorted(BASE))
def test_every_member_of_every_json_type(key: str) -> None:
    """The schema's corners, exhaustively: each member as each JSON type (not left to chance)."""
    for value in (None, True, 0, -1, 10**30, 1.5, "", "zz", [], {}, [1], {"a": 1}):
        _verdict_or_named_error(json.dumps({**BASE, key: value}))


# ---- signed but hostile TCB info / QE identity: past the signature, into the parsers -----------------
@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> tuple[SimPlatform, bytes, object, TrustAnchor]:
    plat = SimPlatform.create(Path(tmp_path_factory.mktemp("sim")) / "platform", tcb_status="UpToDate")
    sc = plat.collateral()
    return plat, plat.quote(b"properties".ljust(64, b"\0")), sc, TrustAnchor.from_bytes(plat.root_ca_der())


@st.composite
def edited_objects(draw: st.DrawFn, base: dict) -> dict:
    """`base` with 1-3 members (top level or one level down, lists included) replaced or removed."""
    obj = json.loads(json.dumps(base))
    for _ in range(draw(st.integers(1, 3))):
        holder = obj
        inner = [k for k, v in obj.items() if isinstance(v, dict | list) and v]
        if inner and draw(st.booleans()):
            sub = obj[draw(st.sampled_from(sorted(inner)))]
            holder = sub if isinstance(sub, dict) else sub[draw(st.integers(0, len(sub) - 1))]
        if not isinstance(holder, dict) or not holder:
            continue
        k = draw(st.sampled_from(sorted(holder)))
        if draw(st.integers(0, 3)) == 0:
            del holder[k]
        else:
            holder[k] = draw(json_value)
    return obj


@ci(150)
@given(data=st.data())
def test_signed_hostile_tcb_info_and_qe_identity(sim, data: st.DataObject) -> None:  # noqa: ANN001
    plat, quote, sc, anchor = sim
    member, attr, field = data.draw(st.sampled_from([("tcbInfo", "tcb_info", "tcb_info"),
                                                     ("enclaveIdentity", "qe_identity", "qe_identity")]))
    obj = data.draw(edited_objects(getattr(sc, attr)))
    signed, sig = split_signed_body(signed_body(plat.pki, member, obj), member, member)
    coll = dataclasses.replace(Collateral.from_dcap_qvl_json(sc.to_dcap_qvl_json()),
                               **{field: signed, f"{field}_signature": sig})
    v = Verifier(VerifyOptions(trusted_roots=(anchor,))).verify(quote, coll)
    assert v.exit_code() in (0, 1, 2) and (v.valid or v.error is not None)


# ---- quote bytes -----------------------------------------------------------------------------------
@st.composite
def quote_bytes(draw: st.DrawFn) -> bytes:
    how = draw(st.sampled_from(["flip", "cut", "insert", "splice", "random", "hex"]))
    q = bytearray(QUOTE)
    if how == "random":
        return draw(st.binary(max_size=5000))
    if how == "hex":
        return QUOTE.hex().encode()[:draw(st.integers(0, 2 * len(QUOTE)))]
    i = draw(st.integers(0, len(q) - 1))
    if how == "flip":
        for _ in range(draw(st.integers(1, 4))):
            j = draw(st.integers(0, len(q) - 1))
            q[j] ^= draw(st.integers(1, 255))
    elif how == "cut":
        del q[i:]
    elif how == "insert":
        q[i:i] = draw(st.binary(min_size=1, max_size=64))
    else:  # one length/size field set to an extreme
        q[i:i + 4] = draw(st.sampled_from([b"\xff\xff\xff\xff", b"\0\0\0\0", b"\x00\x10\x00\x00"]))
    return bytes(q)


@ci(300)
@given(quote_bytes())
def test_quote_bytes_give_a_verdict_never_an_exception(raw: bytes) -> None:
    coll = PHALA.load()
    v = VERIFIER.verify(raw, coll, now=PHALA.now)
    assert v.exit_code() in (0, 1, 2)
    if v.error is not None and v.error.code is ErrorCode.NOT_A_QUOTE:
        assert v.exit_code() == 2
    try:
        q = parse_quote(raw, allow_trailing=True)
    except FormatError:
        return
    json.dumps(quote_dict(q))  # what `inspect` prints: always JSON-serialisable, never an exception


@ci(40)
@given(quote_bytes())
def test_inspect_and_verify_commands_exit_with_a_documented_code(tmp_path_factory, raw: bytes) -> None:  # noqa: ANN001
    f = tmp_path_factory.mktemp("q") / "q.dat"
    f.write_bytes(raw)
    r = CliRunner().invoke(main, ["inspect", "--json", str(f)])
    assert r.exit_code in (0, 2) and (r.exception is None or isinstance(r.exception, SystemExit)), r.output
    r = CliRunner().invoke(main, ["verify", str(f), "--collateral", str(path(PHALA.collateral)),
                                  "--now", str(PHALA.now)])
    assert r.exit_code in (0, 1, 2) and isinstance(r.exception, SystemExit | None), r.output


# ---- policy files ----------------------------------------------------------------------------------
POLICY_KEYS = ["accepted_tcb_statuses", "accepted_advisory_ids", "grace_period", "max_collateral_age", "mr_enclave",
               "mr_signer", "isv_prod_id", "min_isv_svn", "report_data", "allow_debug"]
policy_value = json_value | st.sampled_from(["30d", "12h", "1e9d", "9" * 40 + "d", "UpToDate", "00" * 32, "-1"]) | \
    st.lists(st.sampled_from(["UpToDate", "OutOfDate", "Revoked", "INTEL-SA-00615", 3]), max_size=3)


@ci(300)
@given(st.dictionaries(st.sampled_from(POLICY_KEYS) | st.text(max_size=5), policy_value, max_size=4) | json_value)
def test_policy_documents_load_or_name_the_problem(doc: object) -> None:
    try:
        pol = Policy.from_dict(doc)
    except VerificationError as e:
        assert e.code is ErrorCode.POLICY_MALFORMED and e.kind is Kind.INPUT
        return
    v = VERIFIER.verify(QUOTE, PHALA.load(), now=PHALA.now, policy=pol)
    assert v.valid and v.exit_code() in (0, 3)


@ci(150)
@given(st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
def test_policy_files_of_any_bytes(tmp_path_factory, data: bytes) -> None:  # noqa: ANN001
    d = tmp_path_factory.mktemp("p")
    for name in ("p.yaml", "p.json"):
        (d / name).write_bytes(data)
        try:
            Policy.load(str(d / name))
        except VerificationError as e:
            assert e.code is ErrorCode.POLICY_MALFORMED
