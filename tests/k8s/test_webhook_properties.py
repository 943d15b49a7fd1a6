"""Issue 11, property tests (Hypothesis, derandomized): any AdmissionReview body gets an HTTP answer - 200
with an AdmissionReview for the same uid, or 400 with a reason - never 500 (our bug) nor an exception; an
allowed patch always applies to the pod and never touches a pod that did not opt in."""

from __future__ import annotations

import base64
import copy
import json

import jsonpatch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from quotehelper.k8s import mutate, webhook
from tests.k8s.helpers import admission_review, plain_pod, seed_pod

CONFIGS = [mutate.MutationConfig(), mutate.MutationConfig(socket_delivery="hostPath", epc_resource="sgx.intel.com/epc",
                                                          default_epc_mib=4)]


def ci(n: int) -> settings:
    return settings(max_examples=n, derandomize=True, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


json_leaf = st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False, allow_infinity=False) | \
    st.text(max_size=20) | st.sampled_from(["Pod", "CREATE", "aesm", "aesmd", "10Mi", "512Ki", "1e3", "/var/run/aesmd"])
json_value = st.recursive(json_leaf, lambda inner: st.lists(inner, max_size=3) |
                          st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=8)
INIT_POD = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "annotations": {
    "sgx.intel.com/quote-provider": "aesmd"}}, "spec": {
    "initContainers": [{"name": "i", "image": "x", "resources": {"limits": {"sgx.intel.com/epc": "512Ki"}}}],
    "containers": [{"name": "a", "image": "x"}]}}
PODS = [seed_pod(), plain_pod({"quotehelper.io/quote-provider": "aesm"}, limits={"sgx.intel.com/epc": "8Mi"}),
        plain_pod(), INIT_POD]


def _paths(obj: object, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += _paths(v, (*prefix, i))
    return out


@st.composite
def reviews(draw: st.DrawFn) -> dict:
    """A real AdmissionReview for one of the pods, with 1-3 values anywhere in it replaced or removed."""
    review = admission_review(copy.deepcopy(draw(st.sampled_from(PODS))))
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(_paths(review)[1:]))
        holder = review
        for p in path[:-1]:
            holder = holder[p]
        if isinstance(holder, dict) and draw(st.integers(0, 3)) == 0:
            del holder[path[-1]]
        else:
            holder[path[-1]] = draw(json_value)
        if not isinstance(review, dict):
            break
    return review


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    how = draw(st.sampled_from(["review", "review", "cut", "bytes", "deep", "json"]))
    if how == "bytes":
        return draw(st.binary(max_size=200))
    if how == "json":
        return json.dumps(draw(json_value)).encode()
    if how == "deep":
        n = draw(st.integers(60, 5000))
        return b'{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":' + b"[" * n + b"]" * n + b"}"
    raw = json.dumps(draw(reviews())).encode()
    return raw[:draw(st.integers(0, len(raw)))] if how == "cut" else raw


def _pod_of(raw: bytes) -> object:
    try:
        return json.loads(raw)["request"]["object"]
    except (ValueError, KeyError, TypeError):
        return None


@ci(400)
@given(bodies(), st.sampled_from(CONFIGS))
def test_every_body_gets_an_answer(raw: bytes, cfg: mutate.MutationConfig) -> None:
    status, out = webhook.answer(raw, cfg)
    assert status in (200, 400), out
    if status == 400:
        assert isinstance(out["error"], str) and out["error"]
        return
    resp = out["response"]
    assert out["kind"] == "AdmissionReview" and isinstance(resp["uid"], str)
    if "patch" in resp:
        pod = _pod_of(raw)
        assert mutate.opted_in(pod)
        patched = jsonpatch.apply_patch(pod, json.loads(base64.b64decode(resp["patch"])))
        assert mutate.patch_for(patched, cfg) == []  # idempotent on whatever shape was accepted
    elif resp["allowed"] is False:
        assert resp["status"]["code"] == 422 and resp["status"]["message"].startswith("quotehelper: ")


@ci(200)
@given(reviews(), st.sampled_from(CONFIGS))
def test_a_pod_that_did_not_opt_in_is_never_patched(review: dict, cfg: mutate.MutationConfig) -> None:
    pod = (review.get("request") or {}).get("object") if isinstance(review.get("request"), dict) else None
    status, out = webhook.answer(json.dumps(review).encode(), cfg)
    if status == 200 and not mutate.opted_in(pod):
        assert out["response"]["allowed"] is True and "patch" not in out["response"]
