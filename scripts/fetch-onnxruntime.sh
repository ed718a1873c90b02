#!/usr/bin/env bash
# fetch-onnxruntime.sh [DEST] — installs the ONNX Runtime shared library that
# ebb's onnx runtime loads (through github.com/yalue/onnxruntime_go).
#
# The library is taken from the npm package onnxruntime-node, which ships a
# CPU build for linux/x64. `npm pack` is used rather than `npm install`
# because the package's install script tries to download CUDA parts. The
# version is pinned to the ONNX Runtime C API that onnxruntime_go v1.27.0 is
# built against (1.24), and both the tarball and the extracted library are
# checked against pinned sha256 sums, so a registry that serves something else
# is refused instead of loaded into every ebb process.
#
# DEST defaults to ./.cache/onnxruntime/lib (relative to the current
# directory), which is where ebb looks by default. Running the script again
# does nothing when the library is already there with the right checksum.
set -euo pipefail

ORT_VERSION=1.24.3
# sha256 of onnxruntime-node-1.24.3.tgz as served by the npm registry
# (npm integrity sha512-JH7+czbc8ALA819vlTgcV+Q214/+VjGeBHDjX81+ZCD0PCVCIFGFNtT0V4sXG/1JXypKPgScQcB3ij/hk3YnTg==).
TARBALL_SHA256=aa1bb5fa261ea68de05dd53efbba210cd7adf2d2850f4c3a201054c74cc78040
# sha256 of package/bin/napi-v6/linux/x64/libonnxruntime.so.1 inside it.
LIB_SHA256=92ba8e44d31b80a34f5e805076a044122c3be1fffe0d88ed790de7267b0b2682
LIB_IN_TARBALL=package/bin/napi-v6/linux/x64/libonnxruntime.so.1
LIB_NAME=libonnxruntime.so.1

DEST=${1:-./.cache/onnxruntime/lib}

die() {
	echo "fetch-onnxruntime: $*" >&2
	exit 1
}

case "$(uname -s)/$(uname -m)" in
Linux/x86_64) ;;
*) die "only linux/x86_64 is supported by this script (this is $(uname -s)/$(uname -m))" ;;
esac

sha256() { sha256sum "$1" | cut -d' ' -f1; }

if [[ -f "$DEST/$LIB_NAME" ]] && [[ "$(sha256 "$DEST/$LIB_NAME")" == "$LIB_SHA256" ]]; then
	echo "fetch-onnxruntime: $DEST/$LIB_NAME is already ONNX Runtime $ORT_VERSION"
	exit 0
fi

command -v npm >/dev/null || die "npm is required (apt-get install npm)"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

echo "fetch-onnxruntime: npm pack onnxruntime-node@$ORT_VERSION"
(cd "$work" && npm pack --silent "onnxruntime-node@$ORT_VERSION" >/dev/null)
tarball="$work/onnxruntime-node-$ORT_VERSION.tgz"
[[ -f "$tarball" ]] || die "npm pack did not produce $(basename "$tarball")"

got=$(sha256 "$tarball")
[[ "$got" == "$TARBALL_SHA256" ]] || die "checksum mismatch for $(basename "$tarball"): got $got, want $TARBALL_SHA256"

tar -xzf "$tarball" -C "$work" "$LIB_IN_TARBALL"
got=$(sha256 "$work/$LIB_IN_TARBALL")
[[ "$got" == "$LIB_SHA256" ]] || die "checksum mismatch for $LIB_NAME: got $got, want $LIB_SHA256"

mkdir -p "$DEST"
# Install under a temporary name and rename, so that a process starting
# concurrently never loads a half-written library.
install -m 0644 "$work/$LIB_IN_TARBALL" "$DEST/.$LIB_NAME.tmp"
mv -f "$DEST/.$LIB_NAME.tmp" "$DEST/$LIB_NAME"
echo "fetch-onnxruntime: installed ONNX Runtime $ORT_VERSION to $DEST/$LIB_NAME"
