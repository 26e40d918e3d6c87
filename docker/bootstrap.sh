#!/usr/bin/env bash
# Xylem bootstrap: installs every system package Xylem needs, then builds the workspace.
#
# Idempotent: run it as often as you like. As root on Debian bookworm:
#   docker/bootstrap.sh            # install + build
#   docker/bootstrap.sh demo       # ... then run `xylem lab demo`
#   docker/bootstrap.sh test       # ... then run the whole test suite (privileged tests included)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$here"

if [ "$(id -u)" -ne 0 ]; then
  echo "bootstrap: must run as root (it installs packages and the tests create network namespaces)." >&2
  echo "bootstrap: run it as root (sudo $0 $* where sudo exists)." >&2
  exit 1
fi

packages=(
  # The XDP program (clang-19 targets BPF; llvm-19 gives llvm-strip-19) and its headers.
  clang-19 llvm-19 libbpf-dev linux-libc-dev
  # xsk-rs compiles its own libxdp/libbpf: it needs these.
  clang llvm libelf-dev zlib1g-dev m4 pkg-config make gcc libc6-dev
  # The lab, tests and benchmarks.
  iproute2 ethtool iputils-ping netcat-openbsd netperf tcpdump bpftool procps iptables curl util-linux
  # curl's https (rustup, below, on a machine without Rust).
  ca-certificates
  # Backend servers in the service tests (a pod that answers with its name).
  socat
  # DNS-aware policy tests: the lab's DNS server pod (dnsmasq-base: the binary alone, no
  # system service to grab port 53 on the machine), dig, and a DNS load generator.
  dnsmasq-base bind9-dnsutils dnsperf
  # Independent verification of the ESP between nodes: tshark decrypts a capture of the
  # underlay with the SA keys.
  tshark
  # Fonts for the benchmark charts (plotters renders text through fontconfig).
  libfontconfig1-dev fonts-dejavu-core
  # The CNI tests run a real runtime: they start containerd themselves (with their own
  # address, root and state; the system service the package may start is left alone), which
  # runs containers through runc from a busybox-static root filesystem; host-local, ptp and
  # bridge, which xylem-cni delegates to or chains after, come from containernetworking-plugins
  # (under /usr/lib/cni).
  containerd runc containernetworking-plugins busybox-static
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if [ ${#missing[@]} -gt 0 ]; then
  echo "bootstrap: installing: ${missing[*]}"
  # netperf lives in Debian's non-free component; enable it in place (no new mirror is written).
  src=/etc/apt/sources.list.d/debian.sources
  if [ -f "$src" ] && ! grep -qE '^Components:.*\bnon-free\b' "$src"; then
    sed -i -E '/^Components:/ { /\bnon-free\b/! s/$/ non-free/ }' "$src"
  fi
  if [ -f /etc/apt/sources.list ] && grep -qE '^deb .*debian' /etc/apt/sources.list; then
    sed -i -E '/^deb .*debian/ { / non-free( |$)/! s/$/ non-free/ }' /etc/apt/sources.list
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# bpffs, for pinned maps (harmless if already mounted).
mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf || true

export PATH="$HOME/.cargo/bin:$PATH"
# A fresh machine has no Rust: install the workspace's rust-version through rustup (once; a
# machine that has cargo keeps its own toolchain).
if ! command -v cargo >/dev/null 2>&1; then
  rust_version=$(sed -nE 's/^rust-version = "([0-9.]+)"/\1/p' "$here/Cargo.toml")
  echo "bootstrap: cargo not found: installing Rust ${rust_version} with rustup (minimal profile)"
  curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs |
    sh -s -- -y --no-modify-path --profile minimal --default-toolchain "$rust_version"
fi
echo "bootstrap: building the workspace (release)"
cargo build --release --workspace --bins

case "${1:-}" in
  "") ;;
  demo) exec "$here/target/release/xylem" lab demo ;;
  test) exec "$here/.ci/test" ;;
  *) echo "bootstrap: unknown action '$1' (use: demo | test)" >&2; exit 2 ;;
esac
