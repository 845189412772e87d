"""Checks the rendered Kubernetes manifests against what the `dcp` processes expect.

Schema validation and checkov know Kubernetes but not Open DCP: this catches a
probe on the wrong port, an address naming no Service, a shutdown grace that
outlives the pod's termination grace period, or a secret value kept in git.

    python deploy/check_manifests.py base=build/base.yaml dev=build/dev.yaml prod=build/prod.yaml
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

GRPC_SERVICES = ("schema", "profiles", "aliases", "imports")
AUTOSCALED = ("gateway", "profiles")
# Which secret settings each process reads (services/commands.py `_serve`); the
# gateway owns no data and must not be handed any of them.
REQUIRED_SECRETS = {name: {"DCP_DATABASE_URL", "DCP_IDENTITY_KEY"} for name in GRPC_SERVICES}
REQUIRED_SECRETS["schema"].add("DCP_SECRETS_KEY")
REQUIRED_SECRETS["gateway"] = set()
FORBIDDEN_FOR_GATEWAY = {
    "DCP_DATABASE_URL",
    "DCP_IDENTITY_KEY",
    "DCP_SECRETS_KEY",
    "DCP_SECRETS_PREVIOUS_KEYS",
    "DCP_S3_ACCESS_KEY_ID",
    "DCP_S3_SECRET_ACCESS_KEY",
}
# Overlays that must keep every secret value out of git.
NO_SECRETS = ("base", "prod")

Doc = dict[str, Any]


def component(doc: Doc) -> str:
    return str(doc["metadata"].get("labels", {}).get("app.kubernetes.io/component", ""))


def platform(docs: list[Doc], kind: str) -> Iterator[Doc]:
    for doc in docs:
        labels = doc["metadata"].get("labels", {})
        if doc["kind"] == kind and labels.get("app.kubernetes.io/name") == "open-dcp":
            yield doc


def dcp_container(workload: Doc) -> Doc:
    containers = workload["spec"]["template"]["spec"]["containers"]
    return next(c for c in containers if c["name"] == "dcp")


def port_named(container: Doc, name: str) -> int | None:
    return next((p["containerPort"] for p in container.get("ports", []) if p.get("name") == name), None)


class Checker:
    """Collects every problem of one rendered overlay, so one run names them all."""

    def __init__(self, name: str, docs: list[Doc]) -> None:
        self.name = name
        self.docs = docs
        self.problems: list[str] = []
        config = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("dcp-config"))
        self.settings: dict[str, str] = config["data"]

    def expect(self, condition: bool, message: str) -> None:
        if not condition:
            self.problems.append(f"{self.name}: {message}")

    def run(self) -> list[str]:
        if self.name in NO_SECRETS:
            secrets = [d["metadata"]["name"] for d in self.docs if d["kind"] == "Secret"]
            self.expect(not secrets, f"Secrets must come from the operator, found {secrets}")
        self.check_addresses()
        deployments = {component(d): d for d in platform(self.docs, "Deployment")}
        self.expect(set(deployments) == {*GRPC_SERVICES, "gateway"}, f"unexpected Deployments {sorted(deployments)}")
        budgets = {component(d) for d in platform(self.docs, "PodDisruptionBudget")}
        scalers = {d["spec"]["scaleTargetRef"]["name"] for d in platform(self.docs, "HorizontalPodAutoscaler")}
        for service, deployment in deployments.items():
            self.expect(service in budgets, f"{service} has no PodDisruptionBudget")
            autoscaled = deployment["metadata"]["name"] in scalers
            self.expect(autoscaled == (service in AUTOSCALED), f"{service}: autoscaler present is {autoscaled}")
            if autoscaled:
                self.expect("replicas" not in deployment["spec"], f"{service} sets replicas under an autoscaler")
            self.check_deployment(service, deployment)
        migrations = [d for d in platform(self.docs, "Job") if component(d) == "migrate"]
        self.expect(
            len(migrations) == 1 and dcp_container(migrations[0])["args"] == ["migrate"], "no `dcp migrate` Job"
        )
        policies = [d for d in self.docs if d["kind"] == "NetworkPolicy"]
        self.expect(
            any(p["spec"]["podSelector"] == {} and "ingress" not in p["spec"] for p in policies),
            "no default-deny ingress NetworkPolicy",
        )
        return self.problems

    def check_addresses(self) -> None:
        services = {d["metadata"]["name"]: d for d in self.docs if d["kind"] == "Service"}
        for service in GRPC_SERVICES:
            address = self.settings.get(f"DCP_{service.upper()}_ADDRESS", "")
            # dns:/// lets the channel see every pod of a headless Service.
            host, _, port = address.removeprefix("dns:///").rpartition(":")
            target = services.get(host)
            self.expect(target is not None, f"DCP_{service.upper()}_ADDRESS={address} names no Service")
            if target is not None:
                self.expect(
                    target["spec"].get("clusterIP") == "None" and address.startswith("dns:///"),
                    f"{host} must be a headless Service dialled as dns:///, so calls spread over its pods",
                )
                ports = {p["port"]: p.get("targetPort") for p in target["spec"]["ports"]}
                self.expect(ports.get(int(port or 0)) == "grpc", f"Service {host} does not route {port} to grpc")

    def check_deployment(self, service: str, deployment: Doc) -> None:
        pod = deployment["spec"]["template"]
        container = dcp_container(deployment)
        self.expect(container.get("args") == ["serve", service], f"{service} runs {container.get('args')}")

        metrics_port = int(self.settings["DCP_METRICS_PORT"])
        self.expect(port_named(container, "metrics") == metrics_port, f"{service} metrics port is not {metrics_port}")
        annotations = pod["metadata"].get("annotations", {})
        self.expect(annotations.get("prometheus.io/port") == str(metrics_port), f"{service} scrape port mismatch")

        probes = [container.get(p) for p in ("startupProbe", "readinessProbe", "livenessProbe")]
        if service == "gateway":
            http_port = int(self.settings["DCP_HTTP_PORT"])
            self.expect(port_named(container, "http") == http_port, f"gateway http port is not {http_port}")
            paths = [(p or {}).get("httpGet", {}).get("path") for p in probes[1:]]
            self.expect(paths == ["/readyz", "/healthz"], f"gateway readiness, liveness probe {paths}")
        else:
            grpc_port = int(self.settings["DCP_GRPC_PORT"])
            self.expect(port_named(container, "grpc") == grpc_port, f"{service} grpc port is not {grpc_port}")
            for probe in probes:
                self.expect(probe is not None and probe["grpc"]["port"] == grpc_port, f"{service} probe not on gRPC")
            # Readiness follows the database; liveness must not, or an outage restarts every pod.
            startup, readiness, liveness = (p or {} for p in probes)
            self.expect(readiness.get("grpc", {}).get("service", "") == "", f"{service} readiness not whole server")
            for probe in (startup, liveness):
                self.expect(probe.get("grpc", {}).get("service") == "liveness", f"{service} probe not on liveness")

        # SIGTERM waits for the preStop hook; then in-flight calls and the pool
        # close each get up to the shutdown grace before the kubelet kills.
        grace = float(self.settings["DCP_SHUTDOWN_GRACE_SECONDS"])
        pre_stop = container.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
        delay = float(pre_stop[-1]) if pre_stop[:1] == ["sleep"] else 0.0
        budget = pod["spec"].get("terminationGracePeriodSeconds", 30)
        self.expect(delay + 2 * grace < budget, f"{service}: {delay} + 2 x {grace} s must stay below {budget} s")

        env = {e["name"] for e in container.get("env", []) if "secretKeyRef" in e.get("valueFrom", {})}
        missing = REQUIRED_SECRETS[service] - env
        self.expect(not missing, f"{service} lacks {sorted(missing)}")
        if service == "gateway":
            self.expect(not env & FORBIDDEN_FOR_GATEWAY, f"gateway gets {sorted(env & FORBIDDEN_FOR_GATEWAY)}")


def main(arguments: list[str]) -> int:
    problems: list[str] = []
    for argument in arguments:
        name, _, path = argument.partition("=")
        docs = [d for d in yaml.safe_load_all(Path(path).read_text()) if d]
        problems.extend(Checker(name, docs).run())
        print(f"{name}: {len(docs)} objects checked")
    for problem in problems:
        print(f"ERROR {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
