#!/usr/bin/env bash
# Export flash-nsa's Python package (GitHub mdy666/Scalable-Flash-Native-Sparse-Attention, MIT)
# from a bare git copy into .peers/flash-nsa/ (git-ignored), for the `flash-nsa` bench target.
# The device has no network: run this here, then name `.peers` in the device call's `carry`.
#
#   bash scripts/carry-flash-nsa.sh [GIT_DIR]
#
# GIT_DIR defaults to $FLASH_NSA_GIT_DIR, else the path the fetch tool gives for the repository.
set -euo pipefail
cd "$(dirname "$0")/.."
GIT_DIR="${1:-${FLASH_NSA_GIT_DIR:-/work/.mirror/mdy666+Scalable-Flash-Native-Sparse-Attention/repo}}"
DEST=.peers/flash-nsa
if ! git --git-dir="$GIT_DIR" rev-parse --verify -q HEAD > /dev/null; then
    echo "no git repository with a HEAD at $GIT_DIR (fetch github:mdy666/Scalable-Flash-Native-Sparse-Attention)" >&2
    exit 1
fi
rm -rf "$DEST"
mkdir -p "$DEST"
git --git-dir="$GIT_DIR" archive HEAD flash_nsa LICENSE | tar -x -C "$DEST"
git --git-dir="$GIT_DIR" rev-parse HEAD > "$DEST/COMMIT"
echo "flash-nsa $(cat "$DEST/COMMIT") -> $DEST"
