#!/usr/bin/env bash
# Installs what building and testing GDX needs beyond the Rust toolchain.
# Today that is only the toolchain's own components; everything else is a
# crate (SQLite is bundled). Safe to run repeatedly.
set -euo pipefail

need() { command -v "$1" >/dev/null 2>&1; }

if ! need cargo; then
    echo "setup: cargo is not installed; install the Rust toolchain (rustup) first" >&2
    exit 1
fi
for component in rustfmt clippy; do
    if ! cargo "${component/rustfmt/fmt}" --version >/dev/null 2>&1; then
        echo "setup: installing the $component component"
        rustup component add "$component"
    fi
done
# A C compiler builds the bundled SQLite and aws-lc.
if ! need cc; then
    echo "setup: installing a C compiler"
    apt-get update -qq && apt-get install -y -qq build-essential
fi
