#!/usr/bin/env bash
# Validates the Kubernetes manifests of this folder (or of the folder given):
#
#   1. every manifest against the Kubernetes OpenAPI schemas, strictly (an unknown field such
#      as `replica:` or `livenesProbe:` is an error, and so is an apiVersion/kind with no
#      schema), for the oldest and the newest Kubernetes release that kubernetes-validate
#      ships. The schemas come inside the PyPI package: nothing else is downloaded;
#   2. that no YAML mapping has a key twice (YAML parsers keep the last one silently);
#   3. that the worker's TOML in the ConfigMap parses, that each token file it names is a key
#      of the Secret mounted there, and that --config names a file of the mounted ConfigMap;
#   4. that the selectors and named ports agree, and that kustomization.yaml lists every
#      manifest except the example Secret;
#   5. if kubectl is installed, that `kubectl kustomize` renders the folder, and the result
#      validates too.
#
#   deploy/kubernetes/validate.sh               # this folder
#   deploy/kubernetes/validate.sh DIR           # another folder of manifests
#   deploy/kubernetes/validate.sh --self-test   # breaks copies of the manifests in known ways
#                                               # and checks that each one is refused
#
# The tool is installed once, into a virtual environment under target/.
set -euo pipefail

KUBERNETES_VALIDATE_VERSION=1.37.0
# The oldest and the newest Kubernetes release whose schemas kubernetes-validate 1.37.0 ships.
KUBERNETES_VERSIONS=(1.34.0 1.37.0)

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
venv="$repo/target/kubernetes-validate-venv"
kv="$venv/bin/kubernetes-validate"
py="$venv/bin/python"

if [[ ${1:-} == --self-test ]]; then
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  "$0" "$here" >/dev/null || { echo "FAIL the manifests themselves do not validate: run $0" >&2; exit 1; }
  failures=0
  # Each case: a description, a file, and a sed expression that breaks that file.
  cases=(
    "unknown field (replica: 3)|deployment.yaml|s/^  replicas: 3$/  replica: 3/"
    "misspelled probe (livenesProbe)|deployment.yaml|s/livenessProbe:/livenesProbe:/"
    "wrong type (replicas: three)|deployment.yaml|s/^  replicas: 3$/  replicas: three/"
    "apiVersion with no schema (policy/v1beta2)|pdb.yaml|s#^apiVersion: policy/v1\$#apiVersion: policy/v1beta2#"
    "duplicate key (a second replicas)|deployment.yaml|s/^  replicas: 3$/  replicas: 3\\n  replicas: 1/"
    "invalid TOML in the ConfigMap|configmap.yaml|s/^    dry_run = true$/    dry_run = tru/"
    "token file missing from the Secret|configmap.yaml|s#/run/secrets/offboarder/events-token#/run/secrets/offboarder/event-token#"
    "Service selector matching no pod|service.yaml|s/^    app.kubernetes.io\\/component: worker$/    app.kubernetes.io\\/component: wroker/"
    "probe on an undeclared port name|deployment.yaml|0,/port: admin/s//port: admim/"
    "kustomization.yaml missing a manifest|kustomization.yaml|/  - pdb.yaml/d"
  )
  for case in "${cases[@]}"; do
    IFS='|' read -r what file expr <<<"$case"
    rm -rf "$tmp/m" && mkdir "$tmp/m" && cp "$here"/*.yaml "$tmp/m/"
    sed -i -e "$expr" "$tmp/m/$file"
    if cmp -s "$here/$file" "$tmp/m/$file"; then
      echo "FAIL $what: the edit changed nothing in $file"; failures=$((failures + 1)); continue
    fi
    if "$0" "$tmp/m" >"$tmp/out" 2>&1; then
      echo "FAIL $what: accepted"; failures=$((failures + 1))
    else
      reason=$(grep -m1 -E '^(ERROR|WARN|FAIL|FATAL)' "$tmp/out" | sed -E \
        -e 's#^ERROR [^ ]*/([^/ ]+) did not validate for resource ([^ ]+) against version ([0-9.]+): #\1 \2 (\3): #' \
        -e 's#^WARN [^ ]*/([^/ ]+) #\1: #' -e 's#^FAIL ##' | cut -c1-170)
      echo "ok   refused: $what: $reason"
    fi
  done
  if ((failures)); then echo "$failures of ${#cases[@]} broken copies were not refused"; exit 1; fi
  echo "all ${#cases[@]} broken copies refused"
  exit 0
fi

dir=$(cd "${1:-$here}" && pwd)

if [[ ! -x $kv ]] || [[ $("$kv" --version 2>/dev/null) != "$KUBERNETES_VALIDATE_VERSION" ]]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"
fi
"$py" -c 'import sys, tomllib' 2>/dev/null || { echo "FATAL python 3.11 or newer is needed (tomllib)" >&2; exit 2; }

kv_args=(--strict)
for v in "${KUBERNETES_VERSIONS[@]}"; do kv_args+=(-k "$v"); done

# kubernetes-validate exits 0 for a kind or apiVersion it has no schema for, with only a WARN:
# any line other than INFO counts as a failure here.
validate() { # FILE LABEL
  local out rc=0
  out=$("$kv" "${kv_args[@]}" "$1" 2>&1) || rc=$?
  if ((rc != 0)) || grep -qv '^INFO ' <<<"$out"; then
    grep -v '^INFO ' <<<"$out" >&2 || true
    echo "FAIL $2" >&2
    return 1
  fi
  local kinds
  kinds=$(sed -n 's/^INFO .* for resource \([^ ]*\) against version .*/\1/p' <<<"$out" | sort -u | paste -sd, -)
  echo "ok   $2: $kinds (strict, Kubernetes ${KUBERNETES_VERSIONS[*]})"
}

status=0
shopt -s nullglob
manifests=("$dir"/*.yaml "$dir"/*.yml)
((${#manifests[@]})) || { echo "FAIL no manifests in $dir" >&2; exit 1; }
for f in "${manifests[@]}"; do
  [[ $(basename "$f") == kustomization.y*ml ]] && continue
  validate "$f" "$(basename "$f")" || status=1
done

"$py" - "$dir" <<'PY' || status=1
import pathlib, sys, tomllib
import yaml

d = pathlib.Path(sys.argv[1])
failed = False

def fail(msg):
    global failed
    failed = True
    print(f"FAIL {msg}", file=sys.stderr)

class Loader(yaml.SafeLoader):
    pass

def no_duplicates(loader, node, deep=False):
    seen = set()
    for k, _ in node.value:
        key = loader.construct_object(k, deep=True)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", k.start_mark)
        seen.add(key)
    return yaml.SafeLoader.construct_mapping(loader, node, deep)

Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, no_duplicates)

objs, names = [], []
for p in sorted([*d.glob("*.yaml"), *d.glob("*.yml")]):
    names.append(p.name)
    try:
        objs += [(p.name, o) for o in yaml.load_all(p.read_text(), Loader=Loader) if o]
    except yaml.YAMLError as e:
        fail(f"{p.name}: {e}")
if not failed:
    print(f"ok   {len(names)} files parse as YAML, no key twice in a mapping")

def of(kind):
    return [(f, o) for f, o in objs if o.get("kind") == kind]

def subset(sel, labels):
    return all(labels.get(k) == v for k, v in (sel or {}).items())

# Namespaced objects go where the Namespace is.
nss = [o["metadata"]["name"] for _, o in of("Namespace")]
if len(nss) == 1:
    for f, o in objs:
        if o.get("kind") not in ("Namespace", "Kustomization") and o["metadata"].get("namespace") != nss[0]:
            fail(f"{f}: {o['kind']} {o['metadata']['name']} is not in namespace {nss[0]}")

# The worker's TOML, and the token files it names.
configmaps = {o["metadata"]["name"]: o.get("data", {}) for _, o in of("ConfigMap")}
secrets = {o["metadata"]["name"]: {**o.get("data", {}), **o.get("stringData", {})} for _, o in of("Secret")}
token_files = {}
def walk(v, where):
    if isinstance(v, dict):
        if set(v) == {"file"} and isinstance(v["file"], str):
            token_files[v["file"]] = where
        for k, x in v.items():
            walk(x, f"{where}.{k}" if where else k)
for f, o in of("ConfigMap"):
    for key, text in o.get("data", {}).items():
        if key.endswith(".toml"):
            try:
                walk(tomllib.loads(text), "")
                print(f"ok   {f}: {key} parses as TOML")
            except tomllib.TOMLDecodeError as e:
                fail(f"{f}: {key} is not valid TOML: {e}")

for f, dep in of("Deployment"):
    spec = dep["spec"]
    pod = spec["template"]["spec"]
    labels = spec["template"]["metadata"].get("labels", {})
    if not subset(spec["selector"].get("matchLabels"), labels):
        fail(f"{f}: the selector does not match the pod template's labels")
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    for c in pod["containers"]:
        ports = {p.get("name") for p in c.get("ports", [])}
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            port = c.get(probe, {}).get("httpGet", {}).get("port")
            if isinstance(port, str) and port not in ports:
                fail(f"{f}: {c['name']}.{probe} uses port {port!r}, which the container does not name")
        mounts = {}
        for m in c.get("volumeMounts", []):
            v = volumes.get(m["name"])
            if v is None:
                fail(f"{f}: {c['name']} mounts volume {m['name']!r}, which the pod does not have")
            elif "secret" in v:
                name = v["secret"]["secretName"]
                if name not in secrets:
                    fail(f"{f}: Secret {name!r} is not among these manifests")
                mounts[m["mountPath"].rstrip("/")] = set(secrets.get(name, {}))
            elif "configMap" in v:
                name = v["configMap"]["name"]
                if name not in configmaps:
                    fail(f"{f}: ConfigMap {name!r} is not among these manifests")
                mounts[m["mountPath"].rstrip("/")] = set(configmaps.get(name, {}))
        args = c.get("args", [])
        if "--config" in args:
            path = pathlib.PurePosixPath(args[args.index("--config") + 1])
            if path.name not in mounts.get(str(path.parent), set()):
                fail(f"{f}: --config {path} is not a file of a mounted ConfigMap")
        for path, setting in sorted(token_files.items()):
            p = pathlib.PurePosixPath(path)
            if p.name not in mounts.get(str(p.parent), set()):
                fail(f"{f}: {setting} reads {path}, which no mounted Secret or ConfigMap provides")
    print(f"ok   {f}: config, token files ({len(token_files)}), volumes and probe ports agree")
    for kind, get in (("PodDisruptionBudget", lambda o: o["spec"]["selector"].get("matchLabels")),
                      ("Service", lambda o: o["spec"].get("selector"))):
        for g, o in of(kind):
            if not subset(get(o), labels):
                fail(f"{g}: the {kind}'s selector matches no pod of {f}")
            elif kind == "Service":
                for port in o["spec"]["ports"]:
                    t = port.get("targetPort")
                    if isinstance(t, str) and t not in {p.get("name") for c in pod["containers"] for p in c.get("ports", [])}:
                        fail(f"{g}: targetPort {t!r} is not a port name of {f}")
            print(f"ok   {g}: selects the pods of {f}")

for f, k in of("Kustomization"):
    listed = set(k.get("resources", []))
    expected = {n for n in names if n != f and ".example." not in n}
    if listed != expected:
        fail(f"{f}: resources {sorted(listed)}, expected {sorted(expected)} (every manifest but the examples)")
    else:
        print(f"ok   {f}: lists every manifest but the examples")

sys.exit(1 if failed else 0)
PY

if [[ -f $dir/kustomization.yaml ]]; then
  if command -v kubectl >/dev/null 2>&1; then
    rendered=$(mktemp --suffix=.yaml)
    if kubectl kustomize "$dir" >"$rendered" 2>"$rendered.err"; then
      validate "$rendered" "kubectl kustomize output" || status=1
    else
      cat "$rendered.err" >&2
      echo "FAIL kubectl kustomize" >&2
      status=1
    fi
    rm -f "$rendered" "$rendered.err"
  else
    echo "skip kubectl kustomize (no kubectl)"
  fi
fi

if ((status)); then echo "FAIL: some manifests are invalid (see above)" >&2; else echo "all manifests valid"; fi
exit "$status"
