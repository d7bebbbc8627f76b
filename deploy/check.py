"""Checks of deploy/ that no off-the-shelf tool makes; run by deploy/check.sh.

    python3 deploy/check.py docker-context | kubernetes | kubernetes-fleet | metrics | grafana | docs
    python3 deploy/check.py extract-config DIR        # the ConfigMap's keygate.toml, for `keygate check`
    python3 deploy/check.py extract-config-fleet DIR  # the fleet's, and an unreachable store URL

Needs PyYAML (installed with kubernetes-validate) and Python 3.11+ (tomllib).
Prints what is wrong and exits 1, or exits 0 silently.
"""

import json
import re
import sys
import tomllib
import urllib.parse
from pathlib import Path

import yaml

DEPLOY = Path(__file__).resolve().parent
REPO = DEPLOY.parent
K8S = DEPLOY / "kubernetes"
errors: list[str] = []


def fail(msg: str) -> None:
    errors.append(msg)


def expect(cond: bool, msg: str) -> None:
    if not cond:
        fail(msg)


# ---------------------------------------------------------------- Dockerfile

def docker_context() -> None:
    """Every COPY source exists and passes Dockerfile.dockerignore, and the
    manifest needs no file outside what is copied."""
    copied = []
    for line in (DEPLOY / "Dockerfile").read_text().splitlines():
        words = line.split()
        if words[:1] == ["COPY"] and not any(w.startswith("--from") for w in words):
            copied += [w for w in words[1:-1] if not w.startswith("--")]
    expect(copied, "Dockerfile: no COPY from the build context")
    allowed = [
        l[1:].strip()
        for l in (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
        if l.startswith("!")
    ]
    for src in copied:
        name = src.rstrip("/").removeprefix("./")
        expect((REPO / name).exists(), f"Dockerfile: COPY {src}: no such file in the repository")
        expect(name in allowed, f"Dockerfile.dockerignore: {name} is copied but not re-included (!{name})")
    manifest = tomllib.loads((REPO / "Cargo.toml").read_text())
    needed = []
    pkg = manifest.get("package", {})
    for key in ("build", "readme", "license-file"):
        if isinstance(pkg.get(key), str):
            needed.append(pkg[key])
    for kind in ("lib", "bin", "bench", "test", "example"):
        targets = manifest.get(kind, [])
        for t in [targets] if isinstance(targets, dict) else targets:
            if "path" in t:
                needed.append(t["path"])
    copied_names = [c.rstrip("/").removeprefix("./") for c in copied]
    for path in needed:
        expect(
            any(path == c or path.startswith(c + "/") for c in copied_names),
            f"Cargo.toml needs {path}, which deploy/Dockerfile does not copy",
        )
    if (REPO / "build.rs").exists() and "build.rs" not in copied_names:
        fail("build.rs exists but deploy/Dockerfile does not copy it")


# ---------------------------------------------------------------- Kubernetes

def load_docs(*globs: str) -> list[dict]:
    docs = []
    for g in globs:
        for f in sorted(K8S.glob(g)):
            docs += [d for d in yaml.safe_load_all(f.read_text()) if d]
    return docs


def one(docs: list[dict], kind: str, name: str | None = None) -> dict:
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    if len(found) != 1:
        raise SystemExit(f"expected one {kind} {name or ''}, found {len(found)}")
    return found[0]


def duration_seconds(text: str) -> float:
    m = re.fullmatch(r"(\d+)(ms|s|m)", text)
    if not m:
        raise SystemExit(f"cannot read duration {text!r}")
    return int(m[1]) * {"ms": 0.001, "s": 1, "m": 60}[m[2]]


CONFIG_PATH = "/etc/keygate/keygate.toml"


def keygate_container(spec: dict, where: str) -> dict:
    kg = {c["name"]: c for c in spec["containers"]}.get("keygate")
    if kg is None:
        raise SystemExit(f"{where}: no container named keygate")
    return kg


def hardening(spec: dict, c: dict, where: str) -> None:
    """The pod and container settings every keygate container runs with."""
    psc, csc = spec.get("securityContext", {}), c.get("securityContext", {})
    expect(psc.get("runAsNonRoot") is True, f"{where}: pod runAsNonRoot")
    expect(spec.get("automountServiceAccountToken") is False, f"{where}: automountServiceAccountToken false")
    expect(csc.get("readOnlyRootFilesystem") is True, f"{where}: {c['name']}: readOnlyRootFilesystem")
    expect(csc.get("allowPrivilegeEscalation") is False, f"{where}: {c['name']}: allowPrivilegeEscalation false")
    expect(csc.get("capabilities", {}).get("drop") == ["ALL"], f"{where}: {c['name']}: drop ALL capabilities")
    expect(
        (csc.get("seccompProfile") or psc.get("seccompProfile", {})).get("type") == "RuntimeDefault",
        f"{where}: {c['name']}: seccompProfile RuntimeDefault",
    )
    expect("memory" in c.get("resources", {}).get("limits", {}), f"{where}: {c['name']}: memory limit")


def sidecar(dep: dict, where: str) -> tuple[dict, dict, dict[str, int], dict]:
    """The Deployment's pod: selector, ports, probes, hardening. Returns the pod
    spec, the keygate container, its ports and the pod labels."""
    pod = dep["spec"]["template"]
    labels = pod["metadata"]["labels"]
    expect(dep["spec"]["selector"]["matchLabels"].items() <= labels.items(), f"{where}: selector does not match its pods")
    spec = pod["spec"]
    kg = keygate_container(spec, where)
    ports = {p["name"]: p["containerPort"] for p in kg["ports"]}
    expect(ports == {"http": 8080, "metrics": 9090}, f"{where}: keygate ports: {ports}")
    others = [p for c in spec["containers"] if c["name"] != "keygate" for p in c.get("ports", [])]
    expect(not others, f"{where}: only keygate may declare ports")
    # Probes on the ops port.
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        get = kg.get(probe, {}).get("httpGet", {})
        expect(get.get("path") == path and get.get("port") in ("metrics", 9090), f"{where}: {probe} must GET {path} on 9090")
    hardening(spec, kg, where)
    expect(kg.get("args", ["serve", "--config", CONFIG_PATH])[-1] == CONFIG_PATH, f"{where}: keygate --config path")
    annotations = pod["metadata"].get("annotations", {})
    expect(annotations.get("prometheus.io/scrape") == "true" and annotations.get("prometheus.io/port") == str(ports["metrics"]),
           f"{where}: prometheus.io annotations")
    return spec, kg, ports, labels


def config_vs_pod(cfg: dict, spec: dict, kg: dict, ports: dict[str, int], where: str) -> None:
    expect(cfg["upstream"]["url"] == "http://127.0.0.1:3000", f"{where}: upstream.url must be the pod's loopback backend")
    expect(cfg["server"]["listen"] == f"0.0.0.0:{ports['http']}", f"{where}: server.listen must match the http port")
    expect(cfg["metrics"]["listen"] == f"0.0.0.0:{ports['metrics']}",
           f"{where}: metrics.listen must be 0.0.0.0 on the metrics port")
    drain = duration_seconds(cfg["server"].get("drain_timeout", "30s"))
    pre_stop = kg.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
    grace = spec.get("terminationGracePeriodSeconds", 30)
    expect(grace > drain + pre_stop,
           f"{where}: terminationGracePeriodSeconds {grace} <= drain_timeout {drain} + preStop {pre_stop}")


def etc_files(spec: dict, c: dict, where: str) -> dict[str, tuple]:
    """The files under /etc/keygate, mounted as one directory (never subPath),
    as {path: (kind, name, key, mode)} from a configMap, secret or projected volume."""
    mounts = [m for m in c.get("volumeMounts", []) if m["mountPath"] == "/etc/keygate"]
    expect(len(mounts) == 1 and "subPath" not in mounts[0] and "subPathExpr" not in mounts[0],
           f"{where}: /etc/keygate must be one directory mount, without subPath")
    vol = next((v for v in spec.get("volumes", []) if mounts and v["name"] == mounts[0]["name"]), None)
    if vol is None:
        raise SystemExit(f"{where}: no volume for /etc/keygate")
    sources = vol["projected"]["sources"] if "projected" in vol else [
        {k: v} for k, v in vol.items() if k in ("configMap", "secret")]
    files = {}
    for src in sources:
        (kind, ref), = src.items()
        name = ref.get("name", ref.get("secretName"))
        for item in ref.get("items", []):
            files["/etc/keygate/" + item["path"]] = (kind, name, item["key"], item.get("mode"))
    return files


def selects(selector: dict, labels: dict) -> bool:
    return selector.items() <= labels.items()


def services_and_pdb(docs: list[dict], labels: dict, ports: dict[str, int], where: str) -> list[dict]:
    """The Services and the PodDisruptionBudget select the Deployment's pods."""
    services = [d for d in docs if d["kind"] == "Service"]
    for svc in services:
        expect(selects(svc["spec"]["selector"], labels), f"{where}: Service {svc['metadata']['name']} selects no pod")
        for p in svc["spec"]["ports"]:
            expect(p["targetPort"] in ports, f"{where}: Service {svc['metadata']['name']}: unknown targetPort {p['targetPort']}")
    client = [s for s in services if any(p["targetPort"] == "http" for p in s["spec"]["ports"])]
    expect(len(client) == 1 and [p["port"] for p in client[0]["spec"]["ports"]] == [80],
           f"{where}: one client Service, port 80 -> http, and nothing else")
    pdb = one(docs, "PodDisruptionBudget")
    expect(selects(pdb["spec"]["selector"]["matchLabels"], labels), f"{where}: PodDisruptionBudget selects no pod")
    return services


def kubernetes() -> None:
    """Cross-references between the manifests, and the ServiceMonitor (a CRD,
    which the schema check skips) checked by structure."""
    docs = load_docs("*.yaml", "example/*.yaml", "prometheus-operator/*.yaml")
    dep = one(docs, "Deployment")
    spec, kg, ports, labels = sidecar(dep, "deployment.yaml")

    # The config, as the pod sees it.
    cm = one(docs, "ConfigMap", "keygate-config")
    cfg = tomllib.loads(cm["data"]["keygate.toml"])
    config_vs_pod(cfg, spec, kg, ports, "deployment.yaml")

    # The volume: config and store where keygate.toml says, in one projected
    # volume (hot reload of the store needs the kubelet's symlink swap, hence
    # no subPath).
    files = etc_files(spec, kg, "deployment.yaml")
    expect(files.get(CONFIG_PATH, ("",))[:3] == ("configMap", "keygate-config", "keygate.toml"),
           f"{CONFIG_PATH} must come from the ConfigMap")
    store = cfg["keys"]["store"]
    revoked = str(Path(store).with_suffix(".revoked"))
    for path, key in ((store, "keys.toml"), (revoked, "keys.revoked")):
        got = files.get(path)
        expect(got is not None and got[:3] == ("secret", "keygate-keys", key), f"{path} must be the Secret's {key}")
        expect(got is not None and got[3] in (0o400, 0o600), f"{path}: mode must be 0400 or 0600")
    secret = one(docs, "Secret", "keygate-keys")
    expect({"keys.toml", "keys.revoked"} <= set(secret.get("stringData", secret.get("data", {}))),
           "the example Secret must hold keys.toml and keys.revoked")
    expect(not [d for d in load_docs("*.yaml") if d["kind"] == "Secret"],
           "no Secret in kubernetes/ itself: applying that folder would overwrite the real one")

    # Services, PDB and ServiceMonitor select what they should.
    services = services_and_pdb(docs, labels, ports, "deployment.yaml")
    sm = one(docs, "ServiceMonitor")
    expect(sm["apiVersion"] == "monitoring.coreos.com/v1", "ServiceMonitor apiVersion")
    expect(bool(sm["metadata"].get("name")), "ServiceMonitor metadata.name")
    want = sm["spec"]["selector"]["matchLabels"]
    targets = [s for s in services if want.items() <= s["metadata"].get("labels", {}).items()]
    expect(len(targets) == 1, f"ServiceMonitor selects {len(targets)} Services, not 1")
    if targets:
        svc = targets[0]
        names = {p["name"]: p for p in svc["spec"]["ports"]}
        for ep in sm["spec"]["endpoints"]:
            expect(ep.get("port") in names and names[ep["port"]]["targetPort"] == "metrics",
                   f"ServiceMonitor endpoint port {ep.get('port')} is not the metrics port")
            expect(ep.get("path", "/metrics") == "/metrics", "ServiceMonitor path")
        job = svc["metadata"]["labels"].get(sm["spec"].get("jobLabel", ""), svc["metadata"]["name"])
        expect(job == "keygate", f'the scrape job would be "{job}"; KeygateDown expects job="keygate"')


STORE_ENV = "KEYGATE_STORE_URL"
FLEET_SECRET = ("keygate-database", "url")


def store_env(c: dict, where: str) -> None:
    """The container takes the store URL from the Secret, and only from it."""
    env = {e["name"]: e for e in c.get("env", [])}
    ref = env.get(STORE_ENV, {}).get("valueFrom", {}).get("secretKeyRef", {})
    expect((ref.get("name"), ref.get("key")) == FLEET_SECRET,
           f"{where}: {STORE_ENV} must come from Secret {FLEET_SECRET[0]}, key {FLEET_SECRET[1]} (env valueFrom.secretKeyRef)")
    expect("value" not in env.get(STORE_ENV, {}), f"{where}: {STORE_ENV} must not be a literal value")
    expect(not c.get("envFrom"), f"{where}: no envFrom (only {STORE_ENV} is needed)")


def fleet_config(docs: list[dict]) -> tuple[str, dict]:
    """The fleet ConfigMap's keygate.toml, and its parse."""
    text = one(docs, "ConfigMap", "keygate-config-fleet")["data"]["keygate.toml"]
    return text, tomllib.loads(text)


def kubernetes_fleet() -> None:
    """fleet/: the sidecar on the PostgreSQL store (no keys volume, the URL from
    the keygate-database Secret), its ConfigMap (../configmap.yaml but for
    [keys]), the migration Job, and ../service.yaml and ../pdb.yaml selecting
    the fleet's pods."""
    fleet = load_docs("fleet/*.yaml", "fleet/example/*.yaml", "fleet/migrate/*.yaml")
    dep = one(fleet, "Deployment", "loyalty-api")
    where = "fleet/deployment.yaml"
    spec, kg, ports, labels = sidecar(dep, where)
    text, cfg = fleet_config(fleet)
    config_vs_pod(cfg, spec, kg, ports, where)

    # [keys]: the store is the URL in the environment variable the pod sets.
    keys = cfg["keys"]
    expect(keys.get("store_env") == STORE_ENV and "store" not in keys,
           f'fleet ConfigMap: [keys] store_env = "{STORE_ENV}" and no store')
    if "resync_interval" in keys:
        expect(duration_seconds(keys["resync_interval"]) >= 0.1, "fleet ConfigMap: keys.resync_interval below 100ms")
    # Everything else as the single-pod ConfigMap, so the two do not drift.
    base = tomllib.loads(one(load_docs("*.yaml"), "ConfigMap", "keygate-config")["data"]["keygate.toml"])
    strip = lambda c: {s: ({k: v for k, v in t.items() if k not in ("store", "store_env", "resync_interval")}
                           if s == "keys" else t) for s, t in c.items()}
    for section in sorted(set(strip(base)) | set(strip(cfg))):
        expect(strip(base).get(section) == strip(cfg).get(section),
               f"fleet ConfigMap: [{section}] differs from ../configmap.yaml (only the store may)")
    store_env(kg, where)

    # /etc/keygate: the config only, from the fleet ConfigMap; no keys volume
    # and no Secret mounted anywhere in the pod.
    files = etc_files(spec, kg, where)
    expect(files == {CONFIG_PATH: ("configMap", "keygate-config-fleet", "keygate.toml", files.get(CONFIG_PATH, (0,) * 4)[3])},
           f"{where}: /etc/keygate must hold keygate.toml from the keygate-config-fleet ConfigMap, and nothing else")
    secret_vols = [v["name"] for v in spec.get("volumes", [])
                   if "secret" in v or any("secret" in s for s in v.get("projected", {}).get("sources", []))]
    expect(not secret_vols, f"{where}: no Secret volume (the keys are in the database): {secret_vols}")

    # The image the migration ran with is the image that rolls out, and both
    # follow the single-pod Deployment's version.
    single = keygate_container(one(load_docs("*.yaml"), "Deployment")["spec"]["template"]["spec"], "deployment.yaml")
    expect(kg["image"] == single["image"], f"{where}: keygate image {kg['image']} is not deployment.yaml's {single['image']}")

    # The example Secret: a postgres URL with a placeholder password, kept out
    # of every folder meant for `kubectl apply -f`.
    secret = one(fleet, "Secret", FLEET_SECRET[0])
    url = secret.get("stringData", {}).get(FLEET_SECRET[1], "")
    parsed = urllib.parse.urlsplit(url)
    expect(parsed.scheme in ("postgres", "postgresql") and parsed.hostname and parsed.username,
           "the example keygate-database Secret's url must be postgres://USER:PASSWORD@HOST:PORT/DB")
    expect("EXAMPLE" in (parsed.password or "").upper(),
           "the example keygate-database Secret's password must be an obvious placeholder")
    expect(not [d for d in load_docs("fleet/*.yaml", "fleet/migrate/*.yaml") if d["kind"] == "Secret"],
           "no Secret in fleet/ or fleet/migrate/: applying them would overwrite the real one (use fleet/example/)")

    # The migration Job: the same image, config and URL as the sidecar.
    job = one(fleet, "Job", "keygate-migrate")
    jwhere = "fleet/migrate/job.yaml"
    jpod = job["spec"]["template"]
    jspec = jpod["spec"]
    mk = keygate_container(jspec, jwhere)
    expect(mk.get("args") == ["migrate", "--config", CONFIG_PATH], f"{jwhere}: args must be migrate --config {CONFIG_PATH}")
    expect(mk["image"] == kg["image"], f"{jwhere}: image {mk['image']} is not the Deployment's {kg['image']}")
    hardening(jspec, mk, jwhere)
    store_env(mk, jwhere)
    expect(etc_files(jspec, mk, jwhere) == files, f"{jwhere}: /etc/keygate must be the Deployment's")
    expect(jspec.get("restartPolicy") in ("Never", "OnFailure"), f"{jwhere}: restartPolicy Never or OnFailure")
    expect(isinstance(job["spec"].get("backoffLimit"), int), f"{jwhere}: backoffLimit")
    expect(isinstance(job["spec"].get("activeDeadlineSeconds"), int), f"{jwhere}: activeDeadlineSeconds")
    expect(not mk.get("ports"), f"{jwhere}: the Job serves nothing: no ports")

    # ../service.yaml and ../pdb.yaml serve the fleet's pods, never the Job's.
    shared = load_docs("service.yaml", "pdb.yaml")
    services_and_pdb(shared, labels, ports, where)
    for d in shared:
        sel = d["spec"]["selector"]
        sel = sel.get("matchLabels", sel) if d["kind"] == "PodDisruptionBudget" else sel
        expect(not selects(sel, jpod["metadata"]["labels"]),
               f"{jwhere}: {d['kind']} {d['metadata']['name']} selects the migration pod")


def extract_config(out: Path) -> None:
    """The ConfigMap's keygate.toml and the example Secret's files, in OUT, with
    the store path moved from /etc/keygate into OUT (the only change)."""
    docs = load_docs("*.yaml", "example/*.yaml")
    text = one(docs, "ConfigMap", "keygate-config")["data"]["keygate.toml"]
    store = tomllib.loads(text)["keys"]["store"]
    secret = one(docs, "Secret", "keygate-keys")["stringData"]
    (out / "keys").mkdir(parents=True, exist_ok=True)
    local = out / Path(store).relative_to("/etc/keygate")
    (out / "keygate.toml").write_text(text.replace(f'"{store}"', f'"{local}"'))
    local.write_text(secret["keys.toml"])
    local.with_suffix(".revoked").write_text(secret["keys.revoked"])


def extract_config_fleet(out: Path) -> None:
    """The fleet ConfigMap's keygate.toml, unchanged, in OUT/keygate.toml, and
    in OUT/store-url the example Secret's url pointed at 127.0.0.1 port 1,
    where nothing listens: `keygate check` then parses the whole config and
    the URL and fails only at connecting."""
    fleet = load_docs("fleet/*.yaml", "fleet/example/*.yaml")
    text, _ = fleet_config(fleet)
    url = one(fleet, "Secret", FLEET_SECRET[0])["stringData"][FLEET_SECRET[1]]
    parts = urllib.parse.urlsplit(url)
    userinfo, at, _ = parts.netloc.rpartition("@")
    unreachable = parts._replace(netloc=f"{userinfo}{at}127.0.0.1:1").geturl()
    out.mkdir(parents=True, exist_ok=True)
    (out / "keygate.toml").write_text(text)
    (out / "store-url").write_text(unreachable)
    (out / "password").write_text(urllib.parse.unquote(parts.password or ""))


# ---------------------------------------------------------------- metric names

def exported() -> tuple[set[str], dict[str, set[str]]]:
    """Metric names and label values, read from src/metrics/mod.rs."""
    src = (REPO / "src/metrics/mod.rs").read_text()
    names = set(re.findall(r'"(keygate_[a-z_]+)"', src))
    for h in re.findall(r'HistogramOpts::new\(\s*"(keygate_[a-z_]+)"', src):
        names |= {h + "_bucket", h + "_sum", h + "_count"}
    values = {
        # The labels are declared once, in the `decision_labels!` list.
        "decision": set(re.findall(
            r'^\s*[A-Z]\w* => "([a-z_]+)",',
            (re.search(r"^decision_labels! \{(.*?)^\}", src, re.S | re.M) or [None, ""])[1],
            re.M,
        )),
        "kind": set(re.findall(r'UpstreamErrorKind::\w+ => "([a-z_]+)"', src)),
        "access": set(re.findall(r'"(none|read-only|full-access)"', src)),
        "result": set(re.findall(r'with_label_values\(&\["(success|failure)"\]\)', src)),
    }
    if len(names) < 8 or not all(values.values()):
        raise SystemExit("cannot read the metric names from src/metrics/mod.rs")
    return names, values


KEYWORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring",
            "group_left", "group_right", "inf", "nan", "le"}


def expr_errors(expr: str, where: str, names: set[str], values: dict[str, set[str]]) -> None:
    for label, op, val in re.findall(r'\b(decision|kind|access|result)\s*(=~|!~|!=|=)\s*"([^"]*)"', expr):
        for v in val.split("|"):
            if re.fullmatch(r"[a-z_-]+", v):
                expect(v in values[label], f"{where}: {label} value {v!r} is never exported")
    e = re.sub(r'"[^"]*"', '""', expr)
    e = re.sub(r"\{[^}]*\}", "", e)
    e = re.sub(r"\[[^\]]*\]", "", e)
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", e)
    e = re.sub(r"\$\w+", "", e)
    for m in re.finditer(r"(?<![\w.:$])([a-zA-Z_:][\w:]*)(\s*\()?", e):
        ident, call = m[1], m[2]
        if call or ident in KEYWORDS or re.fullmatch(r"\d.*", ident):
            continue
        expect(ident in names, f"{where}: {ident} is not an exported metric")


def metrics() -> None:
    """Every metric name and label value used by the rules and the dashboard is
    one keygate exports (or `up`, or a recording rule of keygate.rules.yml)."""
    names, values = exported()
    rules = yaml.safe_load((DEPLOY / "prometheus/keygate.rules.yml").read_text())
    recorded = {r["record"] for g in rules["groups"] for r in g["rules"] if "record" in r}
    known = names | recorded | {"up"}
    count = 0
    for g in rules["groups"]:
        for r in g["rules"]:
            expr_errors(r["expr"], f"keygate.rules.yml {r.get('record') or r.get('alert')}", known, values)
            count += 1
    dash = json.loads((DEPLOY / "grafana/keygate.json").read_text())
    for p in dash["panels"]:
        for t in p.get("targets", []):
            expr_errors(t["expr"], f"keygate.json panel {p['title']!r}", names, values)
            count += 1
    for v in dash["templating"]["list"]:
        q = v.get("query")
        if isinstance(q, dict):
            m = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", q["query"])
            expect(m is not None, f"keygate.json variable {v['name']}: unexpected query")
            if m:
                expr_errors(m[1], f"keygate.json variable {v['name']}", names, values)
                count += 1
    expect(count > 20, f"only {count} expressions found")
    # Every alert has a promtool test that makes it fire.
    tests = yaml.safe_load((DEPLOY / "prometheus/keygate.rules.test.yml").read_text())
    fired = {t["alertname"] for case in tests["tests"] for t in case.get("alert_rule_test", []) if t.get("exp_alerts")}
    for g in rules["groups"]:
        for r in g["rules"]:
            if "alert" in r:
                expect(r["alert"] in fired, f"keygate.rules.test.yml: no test makes {r['alert']} fire")


def grafana() -> None:
    dash = json.loads((DEPLOY / "grafana/keygate.json").read_text())
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    ds = variables.get("datasource", {})
    expect(ds.get("type") == "datasource" and ds.get("query") == "prometheus", "a datasource variable for Prometheus")
    ids = [p["id"] for p in dash["panels"]]
    expect(len(ids) == len(set(ids)), "panel ids must be unique")
    for p in dash["panels"]:
        g = p["gridPos"]
        expect(0 <= g["x"] and g["x"] + g["w"] <= 24 and g["h"] > 0, f"panel {p['title']!r}: gridPos")
        expect(p.get("datasource", {}).get("uid") == "${datasource}", f"panel {p['title']!r}: datasource")
        expect(p.get("targets"), f"panel {p['title']!r}: no query")
        for t in p.get("targets", []):
            expect(t.get("datasource", {}).get("uid") == "${datasource}" and t.get("refId") and t.get("expr"),
                   f"panel {p['title']!r}: target")
    text = json.dumps(dash)
    for want in ("keygate_decisions_total", "keygate_request_duration_seconds_bucket", "keygate_upstream_errors_total",
                 "keygate_config_last_reload_successful", "keygate_keys", "keygate_connections_active", "keygate_reloads_total",
                 "keygate_upstream_duration_seconds_bucket", "keygate_responses_total",
                 "keygate_tls_certificate_expiry_timestamp_seconds", "keygate_tls_certificate_reloads_total",
                 "keygate_tls_certificate_last_reload_successful"):
        expect(want in text, f"the dashboard does not show {want}")


# ---------------------------------------------------------------- docs

def docs() -> None:
    """Every deploy/ path the READMEs name exists."""
    for readme in (REPO / "README.md", DEPLOY / "README.md"):
        text = readme.read_text()
        for path in set(re.findall(r"\bdeploy/[\w./-]*[\w/]", text)):
            expect((REPO / path).exists(), f"{readme.relative_to(REPO)} names {path}, which does not exist")
        for path in set(re.findall(r"`((?:kubernetes|systemd|prometheus|grafana)/[\w./-]*\w)`", text)):
            expect((DEPLOY / path).exists(), f"{readme.relative_to(REPO)} names {path}, which does not exist")
    expect("## Deploying" in (REPO / "README.md").read_text(), "README.md has no Deploying section")


def main() -> None:
    cmd = sys.argv[1] if len(sys.argv) > 1 else ""
    if cmd in ("extract-config", "extract-config-fleet") and len(sys.argv) == 3:
        globals()[cmd.replace("-", "_")](Path(sys.argv[2]))
    elif cmd in ("docker-context", "kubernetes", "kubernetes-fleet", "metrics", "grafana", "docs"):
        globals()[cmd.replace("-", "_")]()
    else:
        raise SystemExit(__doc__)
    for e in errors:
        print(e)
    sys.exit(1 if errors else 0)


if __name__ == "__main__":
    main()
