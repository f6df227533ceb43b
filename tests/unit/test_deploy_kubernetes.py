"""deploy/kubernetes.yaml: valid against Kubernetes' schemas, and its pods run the router on
the config its ConfigMap holds, with the environment that config needs."""

from __future__ import annotations

import copy
import posixpath
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.support.dockerfile import read
from tests.support.procs import ROOT
from tests.support.router_command import check_config, parse_router_args, router_args

MANIFEST = ROOT / "deploy/kubernetes.yaml"
# The schemas kubernetes-validate bundles for this release; strict: unknown fields are errors.
KUBERNETES = "1.33.0"

Doc = dict[str, Any]


def documents() -> list[Doc]:
    return [d for d in yaml.safe_load_all(MANIFEST.read_text()) if d is not None]


def the(kind: str) -> Doc:
    [doc] = [d for d in documents() if d["kind"] == kind]
    return doc


@pytest.mark.parametrize("doc", documents(), ids=lambda d: f"{d['kind']}/{d['metadata']['name']}")
def test_valid_against_the_schemas(doc: Doc) -> None:
    kubernetes_validate.validate(doc, KUBERNETES, strict=True)


def test_an_unknown_field_is_refused() -> None:
    doc = copy.deepcopy(the("Deployment"))
    doc["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError, match="readinesProbe"):
        kubernetes_validate.validate(doc, KUBERNETES, strict=True)


def test_the_pod_runs_the_router_on_the_configmaps_config() -> None:
    pod = the("Deployment")["spec"]["template"]["spec"]
    [container] = pod["containers"]
    image = read(ROOT / "Dockerfile")
    # Kubernetes' `command` replaces the image's ENTRYPOINT, `args` its CMD.
    argv = [*container.get("command", image.entrypoint), *container.get("args", image.cmd)]
    args = router_args(argv)
    assert args is not None, f"the container runs {argv}, not the router"
    given = parse_router_args(args)

    folder, name = posixpath.split(given.config)
    mounts = [m for m in container["volumeMounts"] if m["mountPath"] == folder]
    assert len(mounts) == 1, f"--config {given.config}: no one volume mounted at {folder}"
    [volume] = [v for v in pod["volumes"] if v["name"] == mounts[0]["name"]]
    configmap = the("ConfigMap")
    assert volume.get("configMap", {}).get("name") == configmap["metadata"]["name"]
    assert name in configmap["data"], f"--config {given.config}: not in the ConfigMap"
    text = configmap["data"][name]

    env = {e["name"]: "from-the-cluster" for e in container.get("env", [])}
    cfg = check_config(text, f"{MANIFEST.name}: ConfigMap {name}", env)
    port = given.port or cfg.server.port
    assert [p["containerPort"] for p in container["ports"]] == [port]


def test_the_pod_runs_as_the_images_user() -> None:
    context = the("Deployment")["spec"]["template"]["spec"]["securityContext"]
    uid, _, gid = read(ROOT / "Dockerfile").user.partition(":")
    assert (context["runAsUser"], context["runAsGroup"]) == (int(uid), int(gid))


def test_the_service_selects_the_pods_and_their_port() -> None:
    service, deployment = the("Service"), the("Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    ports = {p["containerPort"] for p in container["ports"]}
    ports |= {p["name"] for p in container["ports"] if "name" in p}
    targets = [p.get("targetPort", p["port"]) for p in service["spec"]["ports"]]
    assert set(targets) <= ports, f"the Service targets {targets}; the pod has {ports}"
