"""The in-cluster PCCS in the rendered overlays (deploy/components/pccs, pccs-postgres, pccs-simulated,
azure-dcap-client): 2 replicas on PostgreSQL in production and intel-plugin with the credentials from the
operator's Secret, 1 on SQLite in simulate with the simulated PCS in its pod; the configuration JSON
loads with the PCCS's own parser and every key in it is one that parser reads; Intel's QCNL file in the
quote service parses with our reader and names the PCCS Service; the Azure overlays carry the AZDCAP_*
settings. Then the simulate pod's two commands, as rendered, run here: the PCCS answers its probe path
with the upstream down, and serves collateral for a software platform that verifies under its root.
(Rendering and schema validation of every overlay: test_manifests.py.) No cluster, no network."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from quotehelper.pccs.config import PccsConfigError, PccsOptions, merge
from quotehelper.pcs.config import default_pccs_url, read_qcnl_conf
from tests.k8s.test_manifests import DEPLOY, by, parse_cli, pod_spec, render

WITH_PCCS = ("production", "intel-plugin", "simulate")
ON_POSTGRES = ("production", "intel-plugin")
AZURE = ("aks", "azure-legacy")
NO_PCCS = ("aks", "azure-legacy", "aks-azure-quote-helper")
SECRET_EXAMPLE = DEPLOY / "components" / "pccs-postgres" / "secret.example.json"
QCNL_PATH = "/etc/sgx_default_qcnl.conf"


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict]]:
    return {name: render(DEPLOY / "overlays" / name) for name in (*WITH_PCCS, *NO_PCCS)}


def container(obj: dict, name: str) -> dict:
    (c,) = [c for c in pod_spec(obj)["containers"] if c["name"] == name]
    return c


def mounted(docs: list[dict], obj: dict, c: dict, path: str) -> tuple[dict, str]:
    """The volume and the file name (key) that `path` in container `c` comes from."""
    vols = {v["name"]: v for v in pod_spec(obj)["volumes"]}
    for m in c.get("volumeMounts", []):
        if path == m["mountPath"]:
            return vols[m["name"]], m.get("subPath", "")
        if path.startswith(m["mountPath"].rstrip("/") + "/"):
            return vols[m["name"]], path[len(m["mountPath"].rstrip("/")) + 1:]
    raise AssertionError(f"{path} is not mounted in {c['name']}")


def configmap_file(docs: list[dict], obj: dict, c: dict, path: str) -> str:
    vol, key = mounted(docs, obj, c, path)
    assert "configMap" in vol, vol
    return by(docs, "ConfigMap", vol["configMap"]["name"])["data"][key]


def config_args(c: dict) -> list[str]:
    args = c["args"]
    assert args[:2] == ["pccs", "serve"]
    return [args[i + 1] for i, a in enumerate(args) if a == "--config"]


def pccs_config(docs: list[dict]) -> tuple[dict, list[str]]:
    """The Deployment's configuration as the command merges it (the Secret's file: the example), and
    which files it read."""
    dep = by(docs, "Deployment", "pccs")
    c = container(dep, "pccs")
    conf: dict = {}
    for path in config_args(c):
        vol, _key = mounted(docs, dep, c, path)
        if "secret" in vol:  # the operator's, never in the manifests: the documented shape stands in
            assert not [d for d in docs if d["kind"] == "Secret"], "credentials must not ship in the manifests"
            conf = merge(conf, json.loads(SECRET_EXAMPLE.read_text()))
        else:
            conf = merge(conf, json.loads(configmap_file(docs, dep, c, path)))
    return conf, config_args(c)


class Recording(dict):
    """A dict that notes every key read from it (and from the objects inside it)."""

    def __init__(self, data: dict, seen: set[str], prefix: str = "") -> None:
        super().__init__({k: Recording(v, seen, f"{prefix}{k}.") if isinstance(v, dict) else v
                          for k, v in data.items()})
        self.seen, self.prefix = seen, prefix

    def get(self, key, default=None):  # noqa: ANN001, ANN201
        self.seen.add(self.prefix + key)
        return super().get(key, default)

    def __getitem__(self, key):  # noqa: ANN001, ANN204
        self.seen.add(self.prefix + key)
        return super().__getitem__(key)


def unread_keys(conf: dict) -> set[str]:
    """Keys (dotted paths to leaves) of `conf` that PccsOptions.from_dict never reads: a typo."""
    seen: set[str] = set()
    PccsOptions.from_dict(Recording(conf, seen))

    def leaves(d: dict, prefix: str = "") -> set[str]:
        return set().union(*[leaves(v, f"{prefix}{k}.") if isinstance(v, dict) else {prefix + k}
                             for k, v in d.items()]) if d else set()
    return {k for k in leaves(conf) if k not in seen}


def test_a_misspelt_key_would_be_caught():
    good = {"HTTPS_PORT": 8081, "plain_http": True, "DB_CONFIG": "sqlite", "sqlite": {"options": {"storage": "x.db"}}}
    assert unread_keys(good) == set()
    assert unread_keys({**good, "plain_https": True}) == {"plain_https"}
    assert unread_keys({**good, "sqlite": {"option": {"storage": "x.db"}}}) == {"sqlite.option.storage"}


@pytest.mark.parametrize("name", WITH_PCCS)
def test_the_pccs_configuration_loads_and_every_key_is_read(rendered, name):
    conf, files = pccs_config(rendered[name])
    assert unread_keys(conf) == set(), name
    o = PccsOptions.from_dict(conf)
    assert o.plain_http and o.hosts == "0.0.0.0" and o.mode == "LAZY"
    dep = by(rendered[name], "Deployment", "pccs")
    c = container(dep, "pccs")
    assert {p["name"]: p["containerPort"] for p in c["ports"]}["pccs"] == o.port
    assert len(files) == (2 if name in ON_POSTGRES else 1)


@pytest.mark.parametrize("name", ON_POSTGRES)
def test_two_replicas_on_postgresql_with_the_operators_secret(rendered, name):
    docs = rendered[name]
    dep = by(docs, "Deployment", "pccs")
    assert dep["spec"]["replicas"] == 2
    conf, files = pccs_config(docs)
    o = PccsOptions.from_dict(conf)
    assert o.db_url.startswith("postgresql+psycopg://") and o.uri.startswith("https://api.trustedservices.intel.com/")
    # The settings alone name PostgreSQL but no database: the Secret's file must complete them, and it
    # holds exactly the credentials (nothing else the ConfigMap could say in the open).
    settings = json.loads(configmap_file(docs, dep, container(dep, "pccs"), files[0]))
    with pytest.raises(PccsConfigError, match="postgres.url"):
        PccsOptions.from_dict(settings)
    secret = json.loads(SECRET_EXAMPLE.read_text())
    assert set(secret) == {"ApiKey", "UserTokenHash", "AdminTokenHash", "postgres"}
    assert not set(secret) & set(settings)
    vol, key = mounted(docs, dep, container(dep, "pccs"), files[-1])
    assert vol["secret"]["secretName"] == "quotehelper-pccs" and key == "secret.json"
    assert [i["key"] for i in vol["secret"]["items"]] == ["secret.json"]
    pdb = by(docs, "PodDisruptionBudget", "quotehelper-pccs")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= dep["spec"]["template"]["metadata"]["labels"].items()
    assert 1 <= pdb["spec"]["minAvailable"] < dep["spec"]["replicas"]
    spread = pod_spec(dep)["topologySpreadConstraints"][0]
    assert spread["topologyKey"] == "kubernetes.io/hostname"
    assert pod_spec(dep)["securityContext"]["runAsNonRoot"] is True


def test_simulate_one_replica_on_sqlite_with_the_simulated_pcs_in_its_pod(rendered):
    from quotehelper.platform.sim.pki import DEFAULT_PCS_URL

    docs = rendered["simulate"]
    dep = by(docs, "Deployment", "pccs")
    assert dep["spec"]["replicas"] == 1
    assert not [d for d in docs if d["kind"] == "PodDisruptionBudget" and d["metadata"]["name"] == "quotehelper-pccs"]
    conf, files = pccs_config(docs)
    o = PccsOptions.from_dict(conf)
    pccs, pcs = container(dep, "pccs"), container(dep, "pcs")
    # SQLite on the pod's own volume (an emptyDir: a pod on another node, with another PKI, starts empty)
    db = Path(o.db_url.removeprefix("sqlite:///"))
    vol, _ = mounted(docs, dep, pccs, str(db))
    assert o.db_url.startswith("sqlite:///") and "emptyDir" in vol
    # Upstream: the PCS container, on the address the software PKI's CRL distribution points name.
    assert pcs["args"][:2] == ["pcs", "serve"]
    parse_cli(pcs["args"])
    listen = pcs["args"][pcs["args"].index("--listen") + 1]
    assert o.uri == f"http://{listen}/sgx/certification/v4/" and f"http://{listen}" == DEFAULT_PCS_URL
    assert o.api_key == pcs["args"][pcs["args"].index("--api-key") + 1]
    # Both read the PKI the node's device plugin makes, from the host, read-only.
    pki = pcs["args"][pcs["args"].index("--pki") + 1]
    plugin = by(docs, "DaemonSet", "device-plugin")
    platform_dir = Path(container(plugin, "device-plugin")["args"][container(plugin, "device-plugin")["args"]
                                                                    .index("--platform") + 1])
    assert Path(pki) == platform_dir.parent / "pki"  # SimPlatform.create's default PKI beside the platform
    assert o.trusted_root == Path(pki) / "root_ca.pem"
    for c in (pcs, pccs):
        vol, rest = mounted(docs, dep, c, pki + "/root_ca.pem")
        assert vol["hostPath"] == {"path": pki, "type": "Directory"} and rest == "root_ca.pem"
        assert [m for m in c["volumeMounts"] if m["mountPath"] == pki][0]["readOnly"] is True
        assert c["securityContext"]["readOnlyRootFilesystem"] and c["securityContext"]["capabilities"] == {"drop": ["ALL"]}


@pytest.mark.parametrize("name", WITH_PCCS)
def test_qcnl_in_the_quote_service_reaches_the_pccs_service(rendered, name, tmp_path):
    docs = rendered[name]
    svc = by(docs, "Service", "quotehelper-pccs")
    dep = by(docs, "Deployment", "pccs")
    assert svc["spec"]["selector"].items() <= dep["spec"]["template"]["metadata"]["labels"].items()
    (port,) = svc["spec"]["ports"]
    o = PccsOptions.from_dict(pccs_config(docs)[0])
    assert {p["name"]: p["containerPort"] for p in container(dep, "pccs")["ports"]}[port["targetPort"]] == o.port
    url = (f"{'http' if o.plain_http else 'https'}://{svc['metadata']['name']}.{svc['metadata']['namespace']}.svc:"
           f"{port['port']}/sgx/certification/v4/")
    ds = by(docs, "DaemonSet", "quote-helper")
    qh = container(ds, "quote-helper")
    conf_file = tmp_path / "sgx_default_qcnl.conf"
    conf_file.write_text(configmap_file(docs, ds, qh, QCNL_PATH))
    qcnl = read_qcnl_conf(conf_file)
    assert qcnl["pccs_url"] == url and qcnl["collateral_service"] == url
    assert qcnl["use_secure_cert"] is True  # never switched off: an https:// PCCS must present a trusted cert
    assert isinstance(qcnl["retry_times"], int) and 0 < qcnl["pck_cache_expire_hours"] <= 2160
    assert default_pccs_url({}, conf_file) == url  # our verifier reads the same file
    env = {e["name"]: e["value"] for e in qh["env"]}
    assert env["PCCS_URL"] == url
    cache, _ = mounted(docs, ds, qh, env["XDG_CACHE_HOME"] + "/.dcap-qcnl")  # QCNL's cache: writable
    assert "emptyDir" in cache


@pytest.mark.parametrize("name", WITH_PCCS)
def test_pccs_probes_ask_the_process_not_the_upstream(rendered, name):
    c = container(by(rendered[name], "Deployment", "pccs"), "pccs")
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        get = c[probe]["httpGet"]
        assert get["path"] == "/metrics" and get["port"] == "pccs" and get.get("scheme", "HTTP") == "HTTP"


@pytest.mark.parametrize("name", NO_PCCS)
def test_azure_overlays_have_no_pccs_and_carry_the_azdcap_settings(rendered, name):
    docs = rendered[name]
    assert not [d for d in docs if d["metadata"]["name"] in ("pccs", "quotehelper-pccs")]
    if name not in AZURE:  # aks-azure-quote-helper: the add-on's quote helper, not ours, runs Azure's client
        assert not [d for d in docs if d["kind"] == "DaemonSet"]
        return
    ds = by(docs, "DaemonSet", "quote-helper")
    qh = container(ds, "quote-helper")
    env = {e["name"]: e["value"] for e in qh["env"]}
    assert env["AZDCAP_COLLATERAL_VERSION"] == "v4" and env["AZDCAP_COLLATERAL_VERSION_TDX"] == "v4"
    assert env["AZDCAP_BYPASS_BASE_URL"] == "false"  # THIM (the VM's IMDS) first for PCK certificates
    assert "PCCS_URL" not in env and not [m for m in qh["volumeMounts"] if m["mountPath"] == QCNL_PATH]
    cache, _ = mounted(docs, ds, qh, env["AZDCAP_CACHE"] + "/.az-dcap-client")
    assert "emptyDir" in cache  # writable; the root filesystem is not


# ---- the simulate pod's two commands, run here -------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status
    except OSError:
        return 0


def _wait(url: str, proc: subprocess.Popen, deadline_s: float = 60) -> None:
    end = time.monotonic() + deadline_s
    while _get(url) != 200:
        assert proc.poll() is None, proc.communicate()[1]
        assert time.monotonic() < end, f"{url} never answered"
        time.sleep(0.2)


def test_the_simulate_pod_serves_collateral_that_verifies(rendered, tmp_path):
    """The rendered pod's PCCS and PCS commands (only ports and host paths moved into tmp): the PCCS
    answers its probe path before the PCS is up, then serves collateral for a platform of the node's
    PKI that verifies under that PKI's root; `quotehelper verify` with no --pccs-url finds it through
    $PCCS_URL, as in the quote service's pods."""
    from quotehelper.pcs import CollateralClient, PcsOptions
    from quotehelper.platform.sim import SimPlatform
    from quotehelper.verify import TrustAnchor, Verifier, VerifyOptions

    docs = rendered["simulate"]
    dep = by(docs, "Deployment", "pccs")
    pccs_c, pcs_c = container(dep, "pccs"), container(dep, "pcs")
    conf, _ = pccs_config(docs)
    pcs_port, pccs_port = _free_port(), _free_port()
    node = tmp_path / "var-lib-quotehelper"  # the host's /var/lib/quotehelper, as the device plugin fills it
    plat = SimPlatform.create(node / "platform", pcs_url=f"http://127.0.0.1:{pcs_port}")
    pki = pcs_c["args"][pcs_c["args"].index("--pki") + 1]

    def here(path: str) -> str:
        return path.replace(str(Path(pki).parent), str(node))

    conf = {**conf, "HTTPS_PORT": pccs_port, "hosts": "127.0.0.1", "trusted_root": here(conf["trusted_root"]),
            "uri": conf["uri"].replace(pcs_c["args"][pcs_c["args"].index("--listen") + 1], f"127.0.0.1:{pcs_port}"),
            "sqlite": {"options": {"storage": str(tmp_path / "cache" / "pckcache.db")}}}
    assert conf["uri"] == f"http://127.0.0.1:{pcs_port}/sgx/certification/v4/"
    (tmp_path / "cache").mkdir()
    (tmp_path / "pccs.json").write_text(json.dumps(conf))
    pcs_args = [here(a) for a in pcs_c["args"]]
    pcs_args[pcs_args.index("--listen") + 1] = f"127.0.0.1:{pcs_port}"
    pccs_args = [str(tmp_path / "pccs.json") if a.endswith("/pccs.json") else a for a in pccs_c["args"]]
    qh = [sys.executable, "-m", "quotehelper.cli"]
    procs = [subprocess.Popen(qh + pccs_args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)]
    try:
        base = f"http://127.0.0.1:{pccs_port}"
        _wait(base + pccs_c["readinessProbe"]["httpGet"]["path"], procs[0])  # upstream still down
        procs.append(subprocess.Popen(qh + pcs_args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
        _wait(f"http://127.0.0.1:{pcs_port}/sgx/certification/v4/qe/identity", procs[1])
        verifier = Verifier(VerifyOptions(trusted_roots=(TrustAnchor.from_bytes(plat.root_ca_der()),)))
        quote = plat.quote(b"through the in-cluster PCCS")
        fetched = CollateralClient(PcsOptions(base_url=base + "/sgx/certification/v4/"), verifier=verifier).fetch(quote)
        verdict = verifier.verify(quote, fetched.collateral)
        assert verdict.valid and verdict.status == plat.tcb_status == "UpToDate", verdict
        assert set(fetched.sources) and fetched.urls and all(u.startswith(base) for u in fetched.urls.values())
        # The CLI verifier with no --pccs-url, as in the quote service's pods: $PCCS_URL names the PCCS.
        (tmp_path / "quote.bin").write_bytes(quote)
        (tmp_path / "root.pem").write_bytes(plat.root_ca_pem())
        env = {k: v for k, v in os.environ.items() if k not in ("QCNL_CONF_PATH",)}
        r = subprocess.run(qh + ["verify", str(tmp_path / "quote.bin"), "--root-ca", str(tmp_path / "root.pem")],
                           env={**env, "PCCS_URL": base + "/sgx/certification/v4/"}, capture_output=True, text=True,
                           timeout=120)
        assert r.returncode == 0 and "UpToDate" in r.stdout + r.stderr, (r.returncode, r.stdout, r.stderr)
        r = subprocess.run(qh + ["verify", str(tmp_path / "quote.bin"), "--root-ca", str(tmp_path / "root.pem")],
                           env={**env, "PCCS_URL": "", "QCNL_CONF_PATH": str(tmp_path / "none.conf")},
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 2 and "no collateral service" in r.stderr  # it was $PCCS_URL that named it
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(30)
