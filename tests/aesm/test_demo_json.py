"""`quotehelper demo --json`: the run's result as JSON on stdout, progress on stderr."""

from __future__ import annotations

import json
import subprocess
import sys


def test_demo_json_is_the_result_and_only_the_result() -> None:
    r = subprocess.run([sys.executable, "-m", "quotehelper.cli", "demo", "--json", "--update", "none",
                        "--enclaves", "2", "--rounds", "2"], capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)  # nothing else on stdout
    assert d["update"] == "none" and [e["name"] for e in d["enclaves"]] == ["payments", "key-broker"]
    assert all(e["status"] == "UpToDate" and e["rounds"] == 2 for e in d["enclaves"])
    assert d["collateral"]["pcs_url"].startswith("http://127.0.0.1:") and d["collateral"]["cold_ms"] > 0
    assert "enclaves quoting" in r.stderr
