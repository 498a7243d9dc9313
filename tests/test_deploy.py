"""deploy/ rendered by `kubectl kustomize` and validated offline (Kubernetes schemas of a pinned release,
strict; KubeRay's CRD schemas, deploy/ray/crds/), and checked against what it deploys: docker/Dockerfile's
contract, the app's routes and settings, the CLI's arguments and Ray Serve's config schema. No cluster."""

import copy
import json
import os
import re
import shlex
import shutil
import subprocess
import tomllib
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import kubernetes_validate
import pytest
import yaml
from packaging.requirements import Requirement

from service.http.auth import Access, access_of, token_digest
from service.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
K8S_VERSION = "1.33"  # a release whose schemas kubernetes-validate 1.37.0 ships (it has 1.25 to 1.37)
SERVERS = ("single", "replicas", "gpu")  # the overlays
KUSTOMIZATIONS = {name: f"overlays/{name}" for name in SERVERS} | {"jobs": "jobs", "ray": "ray"}
KINDS = ("RayService", "RayJob")
POSTGRES_UID = 999  # the postgres user of the official image (deploy/components/postgres)
VARIABLE = re.compile(r"\$\{(\w+)\}")
Doc = dict[str, Any]
Renders = dict[str, list[Doc]]


@pytest.fixture(scope="module")
def rendered() -> Renders:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.fail("kubectl is not on PATH: tests/test_deploy.py renders deploy/ with `kubectl kustomize` (CI has it)")
    out = {}
    for name, folder in KUSTOMIZATIONS.items():
        run = subprocess.run([kubectl, "kustomize", str(DEPLOY / folder)], capture_output=True, text=True)
        assert run.returncode == 0, f"kubectl kustomize deploy/{folder} failed:\n{run.stderr}"
        out[name] = [doc for doc in yaml.safe_load_all(run.stdout) if doc]
    return out


@pytest.fixture(autouse=True)
def _no_ragserve_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings are built from the manifests alone, not from whatever this shell exports."""
    for key in [k for k in os.environ if k.startswith("RAGSERVE_")]:
        monkeypatch.delenv(key)


def one(docs: list[Doc], kind: str, name: str | None = None) -> Doc:
    found = [d for d in docs if d["kind"] == kind and name in (None, d["metadata"]["name"])]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def dockerfile(name: str = "Dockerfile") -> dict[str, Any]:
    """The runtime stage's contract, parsed from docker/<name> (continuation lines joined)."""
    text = (ROOT / "docker" / name).read_text(encoding="utf-8").replace("\\\n", " ")
    by: dict[str, list[str]] = {}
    for line in text.split(" AS runtime", 1)[1].splitlines():
        word, _, rest = line.strip().partition(" ")
        if word and not word.startswith("#"):
            by.setdefault(word, []).append(rest.strip())
    args = dict(a.split("=", 1) for a in by["ARG"])
    uid, gid = VARIABLE.sub(lambda m: args[m.group(1)], by["USER"][-1]).split(":")
    options, _, command = by["HEALTHCHECK"][-1].partition(" CMD ")
    return {
        "uid": int(uid),
        "gid": int(gid),
        "port": int(by["EXPOSE"][-1]),
        "volume": json.loads(by["VOLUME"][-1])[0],
        "env": dict(item.split("=", 1) for rest in by["ENV"] for item in shlex.split(rest)),
        "entrypoint": json.loads(by["ENTRYPOINT"][-1]),
        "cmd": json.loads(by["CMD"][-1]),
        "check": {k: int(v.removesuffix("s")) for k, v in re.findall(r"--([\w-]+)=(\S+)", options)},
        "check_path": re.findall(r"https?://[^/']+(/\w+)", command)[0],
    }


def pod_templates(doc: Doc) -> list[Doc]:
    spec = doc.get("spec", {})
    if doc["kind"] in ("Deployment", "StatefulSet", "Job"):
        return [spec["template"]]
    if doc["kind"] == "CronJob":
        return [spec["jobTemplate"]["spec"]["template"]]
    if doc["kind"] not in KINDS:
        return []
    cluster = spec.get("rayClusterConfig") or spec["rayClusterSpec"]
    groups = [cluster["headGroupSpec"], *cluster.get("workerGroupSpecs", [])]
    return [g["template"] for g in groups] + ([spec["submitterPodTemplate"]] if "submitterPodTemplate" in spec else [])


def closed(node: Any) -> Any:
    """A CRD schema that refuses unknown fields, as the API server's strict field validation does."""
    if not isinstance(node, dict):
        return [closed(item) for item in node] if isinstance(node, list) else node
    node = {key: closed(value) for key, value in node.items()}
    open_ = "additionalProperties" in node or node.get("x-kubernetes-preserve-unknown-fields")
    return node | ({"additionalProperties": False} if "properties" in node and not open_ else {})


CRDS = {kind: json.loads((DEPLOY / f"ray/crds/{kind.lower()}-v1.json").read_text()) for kind in KINDS}
CRD_VALIDATORS = {kind: jsonschema.Draft7Validator(closed(schema)) for kind, schema in CRDS.items()}


def validate(doc: Doc) -> None:
    if doc["apiVersion"] != "ray.io/v1":
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        return
    errors = [f"{'.'.join(map(str, e.path))}: {e.message}" for e in CRD_VALIDATORS[doc["kind"]].iter_errors(doc)]
    assert not errors, f"{doc['kind']} {doc['metadata']['name']}: " + "; ".join(errors)


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_every_object_validates(rendered: Renders, name: str) -> None:
    assert rendered[name], f"deploy/{KUSTOMIZATIONS[name]} rendered nothing"
    for doc in rendered[name]:
        try:
            validate(doc)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{doc['kind']} {doc['metadata']['name']}: {'.'.join(map(str, exc.path))}: {exc.message}")


def test_the_validators_refuse_unknown_fields(rendered: Renders) -> None:
    deployment = copy.deepcopy(one(rendered["single"], "Deployment"))
    pod_templates(deployment)[0]["spec"]["containers"][0]["resourcez"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(deployment)
    for kind in KINDS:
        doc = copy.deepcopy(one(rendered["ray"], kind))
        pod_templates(doc)[0]["spec"]["containers"][0]["imagePulPolicy"] = "Always"
        with pytest.raises(AssertionError, match="imagePulPolicy"):
            validate(doc)
    assert re.search(r"\b[0-9a-f]{40}\b", (DEPLOY / "ray/crds/README.md").read_text())
    assert all('"description":"' not in json.dumps(s, separators=(",", ":")) for s in CRDS.values())


def env_of(container: Doc, docs: list[Doc]) -> dict[str, str]:
    """A container's environment as the kubelet builds it, from the rendered ConfigMaps and Secrets."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(one(docs, "ConfigMap", source["configMapRef"]["name"])["data"])
        else:
            env.update(one(docs, "Secret", source["secretRef"]["name"])["stringData"])
    for var in container.get("env", []):
        ref = var.get("valueFrom", {}).get("secretKeyRef")
        env[var["name"]] = one(docs, "Secret", ref["name"])["stringData"][ref["key"]] if ref else var["value"]
    return env


def settings_of(env: dict[str, str], **extra: Any) -> Settings:
    fields = {k.removeprefix("RAGSERVE_").lower(): v for k, v in env.items() if k.startswith("RAGSERVE_")}
    unknown = sorted(set(fields) - set(Settings.model_fields))
    assert not unknown, f"not settings (service/settings.py): {unknown}"
    return Settings(_env_file=None, **fields, **extra)  # type: ignore[call-arg]


def server(docs: list[Doc]) -> tuple[Doc, Doc]:
    deployment = one(docs, "Deployment", "ragserve")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return deployment, container


def claims(pod: Doc) -> dict[str, str]:
    return {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v}


@pytest.mark.parametrize("name", SERVERS)
def test_the_server_keeps_the_image_contract(rendered: Renders, name: str) -> None:
    image, docs = dockerfile("Dockerfile.cuda" if name == "gpu" else "Dockerfile"), rendered[name]
    deployment, container = server(docs)
    pod = deployment["spec"]["template"]["spec"]
    env = {**image["env"], **env_of(container, docs)}
    assert image["entrypoint"] == ["ragserve"] and "command" not in container and container["args"] == image["cmd"]
    assert container["ports"] == [{"name": "http", "containerPort": image["port"], "protocol": "TCP"}]
    assert int(env["RAGSERVE_PORT"]) == image["port"]
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes[mounts[image["volume"]]]["persistentVolumeClaim"]["claimName"] == "ragserve-data"
    for key in ("RAGSERVE_REGISTRY_DIR", "RAGSERVE_ADAPTERS_DIR"):
        assert env[key] == image["env"][key], f"{key} differs from the image's"
        assert PurePosixPath(env[key]).parent == PurePosixPath(image["volume"]), f"{key} is not on the data volume"
    assert volumes[mounts[image["env"]["HOME"]]]["emptyDir"]["medium"] == "Memory"  # HOME=/tmp, root read-only
    assert (pod["securityContext"]["runAsUser"], pod["securityContext"]["fsGroup"]) == (image["uid"], image["gid"])
    check = image["check"]
    for probe in (container["startupProbe"], container["readinessProbe"]):
        assert probe["httpGet"] == {"path": image["check_path"], "port": "http"}
        assert (probe["periodSeconds"], probe["timeoutSeconds"]) == (check["interval"], check["timeout"])
    assert container["readinessProbe"]["failureThreshold"] == check["retries"]
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 2 * check["start-period"]  # minutes to load
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert int(annotations["prometheus.io/port"]) == image["port"] and annotations["prometheus.io/path"] == "/metrics"


def test_probe_and_metrics_paths_are_public_routes_of_the_app(rendered: Renders) -> None:
    from fastapi.testclient import TestClient

    from service.http.app import create_app

    app = create_app(Settings(_env_file=None))  # type: ignore[call-arg]  # loads nothing until its lifespan runs
    routes = {path for path, operations in app.openapi()["paths"].items() if "get" in operations}
    _, container = server(rendered["single"])
    paths = {container[p]["httpGet"]["path"] for p in ("startupProbe", "readinessProbe", "livenessProbe")}
    for path in paths | {"/metrics"}:
        assert path in routes and access_of("GET", path) is Access.PUBLIC, path
    client = TestClient(app)  # no lifespan: no model is loaded, as in the first seconds of a pod
    assert client.get("/healthz").status_code == 200 and client.get("/readyz").status_code == 503
    metrics = client.get("/metrics").text
    rule = yaml.safe_load((DEPLOY / "monitoring/prometheus-adapter-rules.yaml").read_text())["rules"][0]
    series = re.fullmatch(r"(\w+)\{.*endpoint=\"([^\"]+)\".*\}", rule["seriesQuery"])
    assert series is not None and f'{series.group(1)}{{endpoint="{series.group(2)}"}}' in metrics
    hpa = one(rendered["replicas"], "HorizontalPodAutoscaler")
    assert sorted(m["type"] for m in hpa["spec"]["metrics"]) == ["Pods", "Resource"]
    (pods,) = [m["pods"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"]
    assert pods["metric"] == {"name": rule["name"]["as"]}
    assert hpa["spec"]["scaleTargetRef"]["name"] == server(rendered["replicas"])[0]["metadata"]["name"]


@pytest.mark.parametrize("name", SERVERS)
def test_the_settings_are_valid_and_fit_the_pods(rendered: Renders, name: str) -> None:
    docs = rendered[name]
    for key in one(docs, "ConfigMap", "ragserve-settings")["data"]:
        assert key.startswith("RAGSERVE_") and key.removeprefix("RAGSERVE_").lower() in Settings.model_fields, key
    deployment, container = server(docs)
    pod = deployment["spec"]["template"]["spec"]
    settings = settings_of(env_of(container, docs))
    assert settings.host == "0.0.0.0" and settings.admin_token_sha256  # the only way it starts on 0.0.0.0
    assert settings.torch_threads == int(container["resources"]["requests"]["cpu"])  # threads <= cores
    assert (grace := settings.shutdown_grace_s) == Settings.model_fields["shutdown_grace_s"].default
    assert pod["terminationGracePeriodSeconds"] > container["lifecycle"]["preStop"]["sleep"]["seconds"] + grace
    replicas = deployment["spec"]["replicas"]
    assert (settings.database_url is not None) == (replicas > 1), "several replicas need the shared store"
    volume = one(docs, "PersistentVolumeClaim", "ragserve-data")["spec"]["accessModes"]
    assert volume == (["ReadWriteMany"] if replicas > 1 else ["ReadWriteOnce"])
    if replicas == 1:
        assert deployment["spec"]["strategy"] == {"type": "Recreate"}
        assert not [d for d in docs if d["kind"] == "HorizontalPodAutoscaler"]
    else:
        assert one(docs, "HorizontalPodAutoscaler")["spec"]["minReplicas"] == replicas == 3
    gpu = container["resources"]["limits"].get("nvidia.com/gpu")
    devices = (settings.retriever_device, settings.generator_device)
    assert (container["image"], gpu, devices, settings.faiss_gpu_search) in (
        ("ragserve:cpu", None, ("auto", "auto"), False),
        ("ragserve:cuda", 1, ("cuda", "cuda"), True),
    )
    if gpu:
        assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
        assert [t["key"] for t in pod["tolerations"]] == ["nvidia.com/gpu"]


def test_secrets_hold_digests_and_matching_credentials(rendered: Renders) -> None:
    digests = one(rendered["single"], "Secret", "ragserve-tokens")["stringData"]
    assert set(digests) <= {"RAGSERVE_ADMIN_TOKEN_SHA256", "RAGSERVE_READ_TOKEN_SHA256"}
    admin = settings_of(digests).admin_token_sha256  # the settings' own validator: 64 lowercase hex each
    token = one(rendered["jobs"], "Secret", "ragserve-ingest-token")["stringData"]["RAGSERVE_TOKEN"]
    assert token_digest(token) in admin and token not in admin  # the Job's token is one the server takes
    docs = rendered["replicas"]
    url = urlsplit(one(docs, "Secret", "ragserve-database")["stringData"]["RAGSERVE_DATABASE_URL"])
    postgres = one(docs, "Secret", "ragserve-postgres")["stringData"]
    wanted = (postgres["POSTGRES_USER"], postgres["POSTGRES_PASSWORD"], "/" + postgres["POSTGRES_DB"])
    assert (url.username, url.password, url.path) == wanted
    service, statefulset = one(docs, "Service", url.hostname)["spec"], one(docs, "StatefulSet", url.hostname)["spec"]
    assert service["clusterIP"] == "None" and service["ports"][0]["port"] == url.port == 5432
    assert statefulset["serviceName"] == url.hostname
    assert statefulset["template"]["spec"]["containers"][0]["image"].startswith("postgres:15")


def test_every_pod_is_hardened_and_sized(rendered: Renders) -> None:
    uid, checked = dockerfile()["uid"], 0
    for doc in [d for docs in rendered.values() for d in docs]:
        for template in pod_templates(doc):
            where, pod = f"{doc['kind']} {doc['metadata']['name']}", template["spec"]
            want = POSTGRES_UID if doc["kind"] == "StatefulSet" else uid
            context = pod["securityContext"]
            assert context["runAsNonRoot"] is True and context["seccompProfile"] == {"type": "RuntimeDefault"}, where
            assert (context["runAsUser"], context["runAsGroup"], context["fsGroup"]) == (want, want, want), where
            assert pod["automountServiceAccountToken"] is False and pod["enableServiceLinks"] is False, where
            volumes = {v["name"]: v for v in pod.get("volumes", [])}
            for v in volumes.values():
                assert v.get("emptyDir", {}).get("medium") != "Memory" or "sizeLimit" in v["emptyDir"], where
            for container in pod["containers"] + pod.get("initContainers", []):
                c = container["securityContext"]
                assert c["readOnlyRootFilesystem"] is True and c["allowPrivilegeEscalation"] is False, where
                assert c["capabilities"] == {"drop": ["ALL"]} and not c.get("privileged"), where
                assert c["runAsNonRoot"] is True and c["runAsUser"] == want, where
                mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
                assert "emptyDir" in volumes[mounts["/tmp"]["name"]], f"{where}: no writable /tmp"
                for bound in ("requests", "limits"):
                    assert {"cpu", "memory"} <= set(container["resources"][bound]), f"{where}: {bound}"
            checked += 1
    assert checked == 11  # 3 servers, postgres, Job, CronJob, RayService head + workers, RayJob's 3 pods


def test_the_job_and_the_cronjob_run_the_same_valid_ingestion(rendered: Renders) -> None:
    from service.cli.parser import parser

    docs = rendered["jobs"]
    job, cron = one(docs, "Job")["spec"]["template"], one(docs, "CronJob")["spec"]["jobTemplate"]["spec"]["template"]
    assert job == cron
    container = job["spec"]["containers"][0]
    args = parser().parse_args(container["args"])
    assert args.command == "ingest" and args.paths == [Path("/corpus")] and args.no_progress
    service = one(rendered["replicas"], "Service", (url := urlsplit(args.url)).hostname)
    assert url.port == service["spec"]["ports"][0]["port"] == dockerfile()["port"]
    assert [e["name"] for e in container["env"]] == ["RAGSERVE_TOKEN"]  # read by `ragserve ingest`
    assert {m["mountPath"]: m.get("readOnly") for m in container["volumeMounts"]} == {"/corpus": True, "/tmp": None}
    assert claims(job["spec"]) == {"corpus": "ragserve-corpus"}


def references(node: Any) -> set[tuple[str, str]]:
    """(kind, name) of every ConfigMap, Secret and volume claim an object names, anywhere in it."""
    if not isinstance(node, dict):
        return set().union(*map(references, node)) if isinstance(node, list) else set()
    kinds = {"configMapRef": "ConfigMap", "secretRef": "Secret", "secretKeyRef": "Secret"}
    found = {(kinds[key], value["name"]) for key, value in node.items() if key in kinds}
    if "persistentVolumeClaim" in node:
        found.add(("PersistentVolumeClaim", node["persistentVolumeClaim"]["claimName"]))
    return found.union(*map(references, node.values()))


def test_every_reference_resolves(rendered: Renders) -> None:
    # deploy/jobs and deploy/ray are applied beside an overlay (deploy/README.md): ray beside replicas
    scopes = {name: rendered[name] for name in (*SERVERS, "jobs")}
    scopes["ray"] = rendered["ray"] + rendered["replicas"] + rendered["jobs"]
    for name, docs in scopes.items():
        have = {(d["kind"], d["metadata"]["name"]) for d in docs}
        for doc in docs:
            missing = references(doc) - have
            assert not missing, f"{name}: {doc['kind']} {doc['metadata']['name']} names what is not there: {missing}"
    for name in SERVERS:  # the Service, the budget and the policy select the server's pods
        labels = server(rendered[name])[0]["spec"]["template"]["metadata"]["labels"]
        for kind in ("Service", "PodDisruptionBudget", "NetworkPolicy"):
            spec = one(rendered[name], kind, "ragserve")["spec"]
            selector = spec.get("podSelector") or spec["selector"]
            assert selector.get("matchLabels", selector).items() <= labels.items(), f"{name}: {kind}"
        assert one(rendered[name], "Service", "ragserve")["spec"]["ports"][0]["targetPort"] == "http"


def test_the_ray_service_and_job_run_what_deploy_ray_and_the_cli_define(rendered: Renders) -> None:
    from ray.serve.schema import ServeDeploySchema

    from service.cli.parser import parser
    from service.rayserve.deployment import deployment_options
    from service.rayserve.live import validate_live

    image, docs = dockerfile(), rendered["ray"] + rendered["replicas"]
    service = one(docs, "RayService")
    config = yaml.safe_load(service["spec"]["serveConfigV2"])
    ServeDeploySchema.model_validate(config)
    local = yaml.safe_load((DEPLOY / "ray/serve.yaml").read_text())
    assert config["http_options"] == {**local["http_options"], "host": "0.0.0.0", "port": image["port"]}
    (app,), (local_app,) = config["applications"], local["applications"]
    for key in ("name", "route_prefix", "import_path", "args"):
        assert app[key] == local_app[key], key
    (deployment,), (local_deployment,) = app["deployments"], local_app["deployments"]
    assert {**deployment, "num_replicas": 0} == {**local_deployment, "num_replicas": 0}
    validate_live(deployment["user_config"])
    workers = (cluster := service["spec"]["rayClusterConfig"])["workerGroupSpecs"]
    cpus = sum(g["replicas"] * int(g["rayStartParams"]["num-cpus"]) for g in workers)
    assert deployment["num_replicas"] * deployment["ray_actor_options"]["num_cpus"] <= cpus
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert Requirement(extras["ray"][0]).specifier.contains(cluster["rayVersion"])
    for group in [cluster["headGroupSpec"], *workers]:
        pod = group["template"]["spec"]
        container = pod["containers"][0]
        assert container["image"] == "ragserve:ray"
        assert {"name": "serve", "containerPort": image["port"]} in container["ports"]
        assert {"name": "data", "mountPath": image["volume"]} in container["volumeMounts"]
        node = {**image["env"], **env_of(container, docs)}
        env_vars = app["runtime_env"]["env_vars"].items()
        replica = node | {k: VARIABLE.sub(lambda m, n=node: n[m.group(1)], v) for k, v in env_vars}
        assert PurePosixPath(replica["RAGSERVE_REGISTRY_DIR"]).parent == PurePosixPath(image["volume"])
        settings = settings_of(replica, **app["args"]["settings"])
        assert settings.database_url and settings.admin_token_sha256 and settings.torch_threads == 1
        stop = deployment_options(settings)["graceful_shutdown_timeout_s"]
        assert pod["terminationGracePeriodSeconds"] > deployment["graceful_shutdown_timeout_s"] >= stop
    # the RayJob: a valid `index build --engine ray`, its driver (the head) writing into the shared registry
    job = one(docs, "RayJob")
    argv = shlex.split(job["spec"]["entrypoint"])
    args = parser().parse_args(argv[1:])
    assert argv[0] == "ragserve" and (args.command, args.action, args.engine) == ("index", "build", "ray")
    assert args.input == [Path("/corpus")] and args.registry and args.address == "auto"
    (container,) = (head := job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"])["containers"]
    settings = settings_of({**image["env"], **env_of(container, docs), "RAGSERVE_INDEX_NAME": args.registry})
    assert PurePosixPath(str(settings.registry_root)).parent == PurePosixPath(image["volume"])
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert mounts["/corpus"]["readOnly"] is True and image["volume"] in mounts
    assert claims(head)[mounts[image["volume"]]["name"]] == "ragserve-data"  # ReadWriteMany in replicas
