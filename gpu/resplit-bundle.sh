#!/bin/bash
# Split a built bundle (OUT/p00, p01, … from build-bundle.sh) again into parts of at most PART_BYTES, without
# downloading or compressing anything: the parts are pieces of one tar, so the whole and its MANIFEST sum stay
# the same and install-bundle.sh takes any part count. For when the project tree grows and a part must shrink
# to fit beside it in one carry (tests/test_repo.py says when).
# usage: PART_BYTES=36000000 bash gpu/resplit-bundle.sh OUT
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=$(cd "$1" && pwd)
part_bytes=${PART_BYTES:-$(sed -nE 's/^part_bytes=\$\{PART_BYTES:-([0-9]+)\}.*/\1/p' "$here/build-bundle.sh")}
sum=$(sed -E 's/.*sha256=([0-9a-f]+).*/\1/' "$out/p00/MANIFEST")
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
cat "$out"/p[0-9][0-9]/part* > "$work/bundle.tar"
[ "$(sha256sum "$work/bundle.tar" | cut -d' ' -f1)" = "$sum" ] || { echo "the parts in $out do not add up to their MANIFEST's sum" >&2; exit 1; }
(cd "$work" && split -b "$part_bytes" -d bundle.tar part)
n=$(ls "$work"/part* | wc -l)
rm -rf "$out"/p[0-9][0-9]
i=0; for f in "$work"/part*; do
  d="$out/p$(printf %02d $i)"; mkdir -p "$d"; mv "$f" "$d/"
  echo "parts=$n sha256=$sum" > "$d/MANIFEST"; cp "$here/install-bundle.sh" "$d/"; i=$((i+1))
done
echo "parts=$n sha256=$sum"; du -sh "$out"/p*
