#!/usr/bin/env bash
# fetch-uplot.sh [--check] — the dashboard's charting library, uPlot (MIT),
# from the npm registry.
#
# The dashboard (web/) embeds uPlot in the ebb binary, so `go build` needs no
# network: the files are committed under web/static/vendor/uplot, with the
# package's LICENSE and a SHA256SUMS of what was copied. This script is how
# they got there, and how they are checked:
#
#   fetch-uplot.sh          npm pack the pinned version, verify the tarball
#                           against its pinned npm integrity (sha512), copy
#                           uPlot.iife.min.js, uPlot.min.css and LICENSE into
#                           web/static/vendor/uplot and write SHA256SUMS.
#   fetch-uplot.sh --check  the same download and verification, then fail
#                           unless the committed files are byte for byte the
#                           package's (CI runs this: .ci/run).
#
# Offline, web's Go tests check the committed files against SHA256SUMS, so
# a hand edit is caught without the network too. To move to a new version,
# change UPLOT_VERSION and UPLOT_INTEGRITY (npm view uplot@X dist.integrity)
# and run the script.
set -euo pipefail

UPLOT_VERSION=1.6.32
UPLOT_INTEGRITY=sha512-KIMVnG68zvu5XXUbC4LQEPnhwOxBuLyW1AHtpm6IKTXImkbLgkMy+jabjLgSLMasNuGGzQm/ep3tOkyTxpiQIw==
# What is taken from the package (paths inside the tarball).
FILES=(package/dist/uPlot.iife.min.js package/dist/uPlot.min.css package/LICENSE)

cd "$(dirname "$0")/.."
DEST=web/static/vendor/uplot

die() {
	echo "fetch-uplot: $*" >&2
	exit 1
}

check=0
case "${1:-}" in
"") ;;
--check) check=1 ;;
*) die "usage: $0 [--check]" ;;
esac

command -v npm >/dev/null || die "npm is required (apt-get install npm)"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

echo "fetch-uplot: npm pack uplot@$UPLOT_VERSION"
(cd "$work" && npm pack --silent "uplot@$UPLOT_VERSION" >/dev/null)
tarball="$work/uplot-$UPLOT_VERSION.tgz"
[[ -f "$tarball" ]] || die "npm pack did not produce $(basename "$tarball")"

got="sha512-$(openssl dgst -sha512 -binary "$tarball" | base64 -w0)"
[[ "$got" == "$UPLOT_INTEGRITY" ]] || die "integrity mismatch for $(basename "$tarball"): got $got, want $UPLOT_INTEGRITY"

tar -xzf "$tarball" -C "$work" "${FILES[@]}"

# sums FILE... prints "sha256  basename" lines, as SHA256SUMS holds them.
sums() {
	for f in "$@"; do
		echo "$(sha256sum "$f" | cut -d' ' -f1)  $(basename "$f")"
	done
}
pkg=("${FILES[@]/#/$work/}")

if ((check)); then
	bad=0
	for f in "${pkg[@]}"; do
		name=$(basename "$f")
		if ! cmp -s "$f" "$DEST/$name"; then
			echo "fetch-uplot: $DEST/$name is not the package's $name" >&2
			bad=1
		fi
	done
	[[ "$(sums "${pkg[@]}")" == "$(cat "$DEST/SHA256SUMS" 2>/dev/null)" ]] || { echo "fetch-uplot: $DEST/SHA256SUMS is stale" >&2; bad=1; }
	[[ "$(cat "$DEST/VERSION" 2>/dev/null)" == "uplot@$UPLOT_VERSION $UPLOT_INTEGRITY" ]] || { echo "fetch-uplot: $DEST/VERSION does not name uplot@$UPLOT_VERSION" >&2; bad=1; }
	((bad == 0)) || die "the committed files are not uplot@$UPLOT_VERSION's; run scripts/fetch-uplot.sh"
	echo "fetch-uplot: $DEST holds uplot@$UPLOT_VERSION as published"
	exit 0
fi

mkdir -p "$DEST"
install -m 0644 "${pkg[@]}" "$DEST/"
sums "${pkg[@]}" >"$DEST/SHA256SUMS"
echo "uplot@$UPLOT_VERSION $UPLOT_INTEGRITY" >"$DEST/VERSION"
echo "fetch-uplot: installed uplot@$UPLOT_VERSION into $DEST"
