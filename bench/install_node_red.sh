#!/bin/sh
# Node-RED for bench/ingest_gateway.py's side-by-side run, pinned and kept out of the repository
# (var/ is ignored). 4.1.x is the line that runs on Debian's Node.js 20 (5.x needs Node >= 22.9).
#   sh bench/install_node_red.sh          # → var/node-red/node_modules/.bin/node-red
# Needs node and npm: apt-get install -y nodejs npm
set -eu
VERSION="${NODE_RED_VERSION:-4.1.15}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
DIR="${NODE_RED_DIR:-$ROOT/var/node-red}"
command -v npm >/dev/null || { echo "npm not found: apt-get install -y nodejs npm" >&2; exit 1; }
mkdir -p "$DIR"
cd "$DIR"
[ -f package.json ] || echo '{"name": "edgefleet-bench-node-red", "private": true}' > package.json
npm install --no-audit --no-fund --save-exact "node-red@$VERSION"
echo "node-red $VERSION in $DIR/node_modules/.bin/node-red"
