"""`pccs serve --config A --config B`: B's keys over A's (objects merged), as a Kubernetes Secret's file
(ApiKey, token hashes, postgres.url) over a ConfigMap's settings; relative paths from A's directory."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from quotehelper.pccs.config import PccsConfigError, PccsOptions, merge

HASH = "ab" * 64


def test_later_files_override_and_objects_merge(tmp_path):
    (tmp_path / "conf").mkdir()
    settings = tmp_path / "conf" / "pccs.json"
    settings.write_text(json.dumps({"HTTPS_PORT": 8081, "CachingFillMode": "LAZY", "plain_http": True,
                                    "DB_CONFIG": "postgres", "postgres": {"url": "postgresql+psycopg://placeholder/x"},
                                    "trusted_root": "root.pem"}))
    secret = tmp_path / "secret.json"
    secret.write_text(json.dumps({"ApiKey": "k", "UserTokenHash": HASH, "CachingFillMode": "REQ",
                                  "postgres": {"url": "postgresql+psycopg://pccs:pw@db:5432/pccs"}}))
    o = PccsOptions.load(settings, secret)
    assert (o.api_key, o.user_token_hash, o.mode, o.plain_http, o.port) == ("k", HASH, "REQ", True, 8081)
    assert o.db_url == "postgresql+psycopg://pccs:pw@db:5432/pccs"
    assert o.trusted_root == tmp_path / "conf" / "root.pem"  # relative to the first file
    assert PccsOptions.load(settings).mode == "LAZY" and PccsOptions.load(secret, settings).mode == "LAZY"


def test_merge_is_recursive_and_leaves_its_inputs_alone():
    a = {"sqlite": {"options": {"storage": "a.db", "x": 1}}, "k": 1}
    b = {"sqlite": {"options": {"storage": "b.db"}}, "k": {"now": "an object"}}
    assert merge(a, b) == {"sqlite": {"options": {"storage": "b.db", "x": 1}}, "k": {"now": "an object"}}
    assert a["sqlite"]["options"]["storage"] == "a.db"


def test_a_bad_second_file_is_named(tmp_path):
    good = tmp_path / "pccs.json"
    good.write_text("{}")
    bad = tmp_path / "secret.json"
    bad.write_text("[1]")
    with pytest.raises(PccsConfigError, match="secret.json must hold a JSON object"):
        PccsOptions.load(good, bad)


def test_the_command_reads_every_config_file(tmp_path):
    """Without the second file the configuration is valid; with it, its bad value stops the start (exit 2,
    the key named) before anything listens: the command passes every --config on."""
    good = tmp_path / "pccs.json"
    good.write_text(json.dumps({"CachingFillMode": "LAZY", "plain_http": True, "HTTPS_PORT": 0}))
    bad = tmp_path / "secret.json"
    bad.write_text(json.dumps({"UserTokenHash": "not a hash"}))
    r = subprocess.run([sys.executable, "-m", "quotehelper.cli", "pccs", "serve", "--config", str(good),
                        "--config", str(bad)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "UserTokenHash" in r.stderr, (r.returncode, r.stderr)
