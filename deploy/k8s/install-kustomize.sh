#!/usr/bin/env bash
# Installs kustomize, pinned, into .cache/bin with `go install` (from the Go module proxy) unless
# that version is already there, and prints its path. Used by `make kustomize` and the tests.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

VERSION=v5.8.0
BIN_DIR="$PWD/.cache/bin"
KUSTOMIZE="$BIN_DIR/kustomize"

if [[ ! -x "$KUSTOMIZE" ]] || [[ "$("$KUSTOMIZE" version 2>/dev/null)" != "$VERSION" ]]; then
  command -v go >/dev/null || { echo "kustomize needs Go to install (go install); none found" >&2; exit 1; }
  mkdir -p "$BIN_DIR"
  GOBIN="$BIN_DIR" go install "sigs.k8s.io/kustomize/kustomize/v5@$VERSION" >&2
fi
echo "$KUSTOMIZE"
