#!/usr/bin/env bash
# Build every plugin crate under plugins/ into a WebAssembly component and copy it to
# <target-dir>/plugins/<crate-name>.wasm, where the gateway's `plugins.dir` can point.
#
#   scripts/build-plugins.sh [extra cargo args, e.g. -j1 or --locked]
#
# One cargo invocation for all plugins (target wasm32-unknown-unknown, profile `plugin`,
# linked into components by wasm-component-ld as set in .cargo/config.toml). Re-running it
# with nothing changed is a cargo no-op and rewrites no output file.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# Cargo reads .cargo/config.toml (the wasm linker setting) relative to the working directory.
cd "$root"

target=wasm32-unknown-unknown
profile=plugin

die() {
    echo "build-plugins: error: $*" >&2
    exit 1
}

command -v cargo >/dev/null || die "cargo not found on PATH"
sysroot="$(rustc --print sysroot)" || die "rustc failed (is the toolchain in rust-toolchain.toml installed?)"
if [[ ! -d "$sysroot/lib/rustlib/$target/lib" ]] && command -v rustup >/dev/null; then
    # Idempotent and quick; the pinned toolchain by name, as RUSTUP_AUTO_INSTALL=0 machines need.
    toolchain="$(sed -n 's/^channel *= *"\(.*\)"/\1/p' rust-toolchain.toml)"
    echo "build-plugins: adding the Rust target $target to toolchain ${toolchain:-default}" >&2
    rustup target add ${toolchain:+--toolchain "$toolchain"} "$target" >&2 ||
        die "rustup could not add the target $target"
fi
if [[ ! -d "$sysroot/lib/rustlib/$target/lib" ]]; then
    die "the Rust target $target is not installed for $(rustc --version).
  Install it with:  rustup target add $target"
fi
host="$(rustc -vV | sed -n 's/^host: //p')"
if [[ ! -x "$sysroot/lib/rustlib/$host/bin/wasm-component-ld" ]] && ! command -v wasm-component-ld >/dev/null; then
    die "wasm-component-ld not found in $sysroot/lib/rustlib/$host/bin nor on PATH
  (it ships with Rust >= 1.82; alternatively: cargo install wasm-component-ld)"
fi

# Plugin crates: every plugins/*/Cargo.toml, by package name.
packages=()
for manifest in plugins/*/Cargo.toml; do
    [[ -f "$manifest" ]] || continue
    name="$(sed -n 's/^name *= *"\([^"]*\)".*/\1/p' "$manifest" | head -n 1)"
    [[ -n "$name" ]] || die "no package name in $manifest"
    packages+=("$name")
done
((${#packages[@]})) || die "no plugin crates under plugins/"

target_dir="$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')"
[[ -n "$target_dir" ]] || die "could not find cargo's target directory"

pkg_args=()
for name in "${packages[@]}"; do
    pkg_args+=(-p "$name")
done
cargo build --target "$target" --profile "$profile" "${pkg_args[@]}" "$@"

out_dir="$target_dir/plugins"
mkdir -p "$out_dir"
for name in "${packages[@]}"; do
    built="$target_dir/$target/$profile/${name//-/_}.wasm"
    [[ -f "$built" ]] || die "cargo did not produce $built"
    # A component starts with "\0asm" and version 0x0d, layer 1; a core module has layer 0.
    header="$(od -An -tx1 -N8 "$built" | tr -d ' \n')"
    [[ "$header" == 0061736d0d000100 ]] ||
        die "$built is not a WebAssembly component (header $header); is the linker from .cargo/config.toml in use?"
    dest="$out_dir/$name.wasm"
    if ! cmp -s "$built" "$dest"; then
        cp "$built" "$dest.tmp"
        mv "$dest.tmp" "$dest"
    fi
    printf '%10s bytes  %s\n' "$(wc -c <"$dest" | tr -d ' ')" "${dest#"$root"/}"
done
