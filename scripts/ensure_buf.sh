#!/usr/bin/env bash
# Installs the pinned buf CLI (for `buf lint` in `make lint`) from a package registry, never from
# buf's own download site: PyPI's buf-bin wheel (the same binary), or npm's @bufbuild/buf where
# no wheel fits this platform. Cached under .tools/buf/<version>/ (git-ignored), so only the first
# run downloads. With arguments, runs buf with them once it is there: `ensure_buf.sh lint protos`.
set -euo pipefail
cd "$(dirname "$0")/.."

BUF_VERSION=1.75.0
home=".tools/buf/$BUF_VERSION"
buf="$home/bin/buf"
python="${PYTHON:-.venv/bin/python}"

if [ ! -x "$buf" ]; then
  echo "installing buf $BUF_VERSION into $home" >&2
  mkdir -p .tools
  staging="$(mktemp -d .tools/staging.XXXXXX)"
  trap 'rm -rf "$staging"' EXIT
  if "$python" -m pip install --quiet --disable-pip-version-check --no-deps --target "$staging/pypi" \
    "buf-bin==$BUF_VERSION" 2>"$staging/pip.log" && [ -x "$staging/pypi/bin/buf" ]; then
    mkdir -p "$staging/out/bin"
    mv "$staging/pypi/bin/buf" "$staging/out/bin/buf"
  elif command -v npm >/dev/null 2>&1; then
    # No wheel for this platform: npm's package carries the binary for it as an optional dependency.
    npm install --silent --no-audit --no-fund --prefix "$staging/npm" "@bufbuild/buf@$BUF_VERSION" >&2
    mkdir -p "$staging/out"
    mv "$staging/npm" "$staging/out/npm"
    mkdir -p "$staging/out/bin"
    ln -s ../npm/node_modules/.bin/buf "$staging/out/bin/buf"
  else
    cat "$staging/pip.log" >&2
    cat >&2 <<MESSAGE
buf $BUF_VERSION could not be installed: PyPI has no buf-bin wheel for this platform and npm is missing.
Install Node.js and npm (e.g. sudo apt-get install nodejs npm), or put buf $BUF_VERSION at $buf,
then run \`make lint\` again.
MESSAGE
    exit 1
  fi
  mkdir -p "$(dirname "$home")"
  rm -rf "$home"
  mv "$staging/out" "$home"
  rm -rf "$staging"
  trap - EXIT
fi

found="$("$buf" --version)"
if [ "$found" != "$BUF_VERSION" ]; then
  echo "$buf is buf $found, not the pinned $BUF_VERSION: remove $home and run again" >&2
  exit 1
fi
if [ "$#" -gt 0 ]; then
  exec "$buf" "$@"
fi
