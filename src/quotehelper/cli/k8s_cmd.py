"""`quotehelper device-plugin`, `quotehelper webhook`, `quotehelper health`: thin fronts over quotehelper.k8s."""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
from pathlib import Path

import click

from quotehelper.cli import common, main
from quotehelper.errors import QuoteHelperError

SIM_EPC_MIB = 256  # EPC the software platform advertises unless --epc-mib says otherwise


def _stop_on_signals() -> threading.Event:
    stop = threading.Event()

    def handler(signum, frame):  # noqa: ARG001
        logging.getLogger("quotehelper.k8s").info("signal %d: shutting down", signum)
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    return stop


@main.command("device-plugin")
@click.option("--plugin-dir", metavar="DIR", type=click.Path(path_type=Path),
              default="/var/lib/kubelet/device-plugins", show_default=True,
              help="kubelet's device-plugin directory (kubelet.sock lives here).")
@click.option("--aesmd-dir", metavar="DIR", type=click.Path(path_type=Path), default="/var/run/aesmd",
              show_default=True, help="Host directory holding the quote service's aesm.socket (mounted into pods).")
@click.option("--simulate", is_flag=True, help="Use the software SGX platform instead of /dev/sgx_*.")
@common.platform_option("Software platform directory, the 'device' with --simulate.",
                        default="/var/lib/quotehelper/platform", aliases=("--platform-dir",))
@click.option("--dev-root", metavar="DIR", type=click.Path(path_type=Path), default="/dev", show_default=True,
              help="Where to look for sgx_enclave / sgx_provision.")
@click.option("--epc-mib", type=click.IntRange(min=1), default=None,
              help=f"EPC size in MiB [default: discovered from sysfs or CPUID; {SIM_EPC_MIB} with --simulate].")
@click.option("--max-epc-mib", type=click.IntRange(min=1), default=64 * 1024, show_default=True,
              help="Cap on advertised EPC devices (keeps ListAndWatch under kubelet's 4 MiB).")
@click.option("--enclave-limit", type=click.IntRange(min=1), default=110, show_default=True,
              help="Pods per node that may hold sgx.intel.com/enclave at once.")
@click.option("--provision-limit", type=click.IntRange(min=1), default=110, show_default=True,
              help="Pods per node that may hold sgx.intel.com/provision at once.")
@click.option("--health-interval", metavar="SECONDS", type=click.FloatRange(min=0.1), default=5.0,
              show_default=True, help="Seconds between device health checks.")
@common.logging_options(default=logging.INFO)
def device_plugin(plugin_dir: Path, aesmd_dir: Path, simulate: bool, platform_dir: Path, dev_root: Path,
                  epc_mib: int | None, max_epc_mib: int, enclave_limit: int, provision_limit: int,
                  health_interval: float) -> None:
    """kubelet device plugin: sgx.intel.com/enclave, sgx.intel.com/provision and
    kubernetes.azure.com/sgx_epc_mem_in_MiB, with the quote service's socket mounted into pods."""
    from quotehelper.k8s.deviceplugin import framework, sgx

    try:
        if simulate:
            plat = sgx.prepare_simulated_platform(platform_dir)
            node = sgx.simulated(plat.platform_dir, epc_mib=epc_mib or SIM_EPC_MIB, aesmd_dir=aesmd_dir,
                                 pki_dir=plat.pki_dir)
        else:
            node = sgx.discover(dev_root, epc_mib=epc_mib, aesmd_dir=aesmd_dir)
        servers = [framework.PluginServer(b, plugin_dir) for b in
                   sgx.backends(node, enclave_limit=enclave_limit, provision_limit=provision_limit,
                                max_epc_mib=max_epc_mib)]
        stop = _stop_on_signals()
        framework.PluginManager(servers, plugin_dir, poll_interval=0.5,
                                health_interval=health_interval).run(stop)
    except QuoteHelperError as e:
        common.fail(str(e))


TLS_DIR_HELP = "Directory with tls.crt and tls.key (and ca.crt)"


@main.command("webhook")
@click.option("--host", default="0.0.0.0", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(1, 65535), default=8443, show_default=True, help="HTTPS port.")
@click.option("--tls-dir", metavar="DIR", type=click.Path(path_type=Path, file_okay=False), default="/tls",
              show_default=True, help=f"{TLS_DIR_HELP}, as `quotehelper webhook-tls` writes it.")
@click.option("--epc-resource", type=click.Choice(["kubernetes.azure.com/sgx_epc_mem_in_MiB", "sgx.intel.com/epc"]),
              default="kubernetes.azure.com/sgx_epc_mem_in_MiB", show_default=True,
              help="The EPC resource the cluster serves; the other name is translated into it.")
@click.option("--socket-delivery", type=click.Choice(["plugin", "hostPath"]), default="plugin", show_default=True,
              help="plugin: the device plugin mounts the socket; hostPath: the webhook adds a hostPath volume.")
@click.option("--enclave-resource/--no-enclave-resource", default=True, show_default=True,
              help="Add sgx.intel.com/enclave: 1 (off where no device plugin serves it).")
@click.option("--default-epc-mib", type=click.IntRange(min=0), default=0, show_default=True,
              help="EPC (MiB) added to an opted-in SGX container that asks for none; 0 adds none.")
@common.logging_options(default=logging.INFO)
def webhook_cmd(host: str, port: int, tls_dir: Path, epc_resource: str, socket_delivery: str,
                enclave_resource: bool, default_epc_mib: int) -> None:
    """Mutating admission webhook (HTTPS, AdmissionReview v1) wiring opted-in pods to the quote service."""
    from quotehelper.k8s import mutate, webhook

    cfg = mutate.MutationConfig(epc_resource=epc_resource, socket_delivery=socket_delivery,
                                enclave_resource=enclave_resource, default_epc_mib=default_epc_mib)
    try:
        server = webhook.make_server(host, port, tls_dir / "tls.crt", tls_dir / "tls.key", cfg)
    except webhook.WebhookError as e:
        common.fail(str(e))
    except (OSError, ValueError) as e:
        common.fail(f"cannot serve on {host}:{port}: {e}")
    stop = _stop_on_signals()
    webhook.serve_in_thread(server)
    logging.getLogger("quotehelper.k8s.webhook").info("serving on https://%s:%d/mutate", host, port)
    stop.wait()
    server.shutdown()
    server.server_close()


@main.command("health")
@common.socket_option("The quote service's AESM socket to check.")
@click.option("--engine", type=click.Choice(["sim", "dcap"]), default="sim", show_default=True,
              help="sim: also quote from a self-test enclave and verify it; dcap: hardware (no self-test quote).")
@common.platform_option()
@common.timeout_option("allowed per call", 10.0)
@common.json_option
@click.option("-q", "--quiet", is_flag=True, help="Print nothing when healthy.")
@common.logging_options(quiet=False)
def health_cmd(socket_path: str, engine: str, platform_dir: Path | None, timeout: float, as_json: bool,
               quiet: bool) -> None:
    """Exit 0 only if the quote service answers on its socket and a self-test quote through it verifies
    (exit 1 otherwise, with the step that failed)."""
    from quotehelper.k8s.health import check

    if engine == "sim" and platform_dir is None:
        from quotehelper.platform.sim import default_platform_dir

        platform_dir = default_platform_dir()
    try:
        report = check(socket_path, platform_dir if engine == "sim" else None, timeout=timeout)
    except QuoteHelperError as e:
        if as_json:
            click.echo(json.dumps({"healthy": False, "error": str(e)}))
        click.echo(f"unhealthy: {e}", err=True)
        sys.exit(1)
    if as_json:
        click.echo(json.dumps({"healthy": True, "steps": list(report.steps), "quote_size": report.quote_size,
                               "verified_status": report.verified_status, "seconds": round(report.seconds, 4)}))
    elif not quiet:
        click.echo(report.summary())


@main.command("webhook-tls")
@click.option("--namespace", envvar="POD_NAMESPACE", default="quotehelper", show_default=True,
              help="The webhook's namespace [env POD_NAMESPACE].")
@click.option("--service", default="quotehelper-webhook", show_default=True, help="The webhook's Service.")
@click.option("--secret", default="quotehelper-webhook-tls", show_default=True, help="The TLS Secret to create.")
@click.option("--webhook-config", default="quotehelper", show_default=True,
              help="MutatingWebhookConfiguration whose caBundle is set.")
@common.option("--tls-dir", "out", aliases=("--out",), metavar="DIR", required=True,
               type=click.Path(path_type=Path, file_okay=False),
               help=f"{TLS_DIR_HELP} to write: what `quotehelper webhook --tls-dir` reads.")
@click.option("--local", is_flag=True, help="Only generate the files (no API server); print the caBundle.")
@common.logging_options(default=logging.INFO)
def webhook_tls_cmd(namespace: str, service: str, secret: str, webhook_config: str, out: Path,
                    local: bool) -> None:
    """Init step of the webhook: one shared TLS Secret, its files, and the caBundle in the webhook config."""
    import base64

    from quotehelper.k8s import tls, tls_init
    from quotehelper.k8s.kubeapi import KubeApi

    try:
        if local:
            material = tls.generate(tls.service_dns_names(service, namespace))
            material.write(out)
            click.echo(base64.b64encode(material.ca_pem).decode())
            return
        click.echo(tls_init.run(KubeApi.in_cluster(), namespace=namespace, service=service, secret=secret,
                                webhook_config=webhook_config, out=out))
    except QuoteHelperError as e:
        common.fail(str(e))
