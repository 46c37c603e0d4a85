# Shared by scripts/*: repo root, host prerequisites. Sourced, not run.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"

# command -> Debian package that provides it
PREREQS=(
  "qemu-system-x86_64:qemu-system-x86"
  "qemu-img:qemu-utils"
  "cpio:cpio"
  "zstd:zstd"
  "protoc:protobuf-compiler"
  "mkfs.ext4:e2fsprogs"
  "e2fsck:e2fsprogs"
  "depmod:kmod"
  "dpkg-deb:dpkg"
  "apt-get:apt"
  "gpgv:gpgv"
  "mkfs.erofs:erofs-utils"
  "blkid:util-linux"
  "unshare:util-linux"
  "nsenter:util-linux"
  "script:bsdutils"
  "dnsmasq:dnsmasq-base"
  "ip:iproute2"
  "docker-registry:docker-registry"
  "skopeo:skopeo"
  "htpasswd:apache2-utils"
  "socat:socat"
  "sfdisk:fdisk"
  "mmdebstrap:mmdebstrap"
)

ensure_prereqs() {
  local missing=()
  for entry in "${PREREQS[@]}"; do
    local cmd="${entry%%:*}" pkg="${entry##*:}"
    if ! command -v "$cmd" >/dev/null 2>&1 && ! [ -x "/usr/sbin/$cmd" ] && ! [ -x "/sbin/$cmd" ]; then
      missing+=("$pkg")
    fi
  done
  [ -f /usr/share/keyrings/debian-archive-keyring.gpg ] || missing+=(debian-archive-keyring)
  if [ ${#missing[@]} -eq 0 ]; then return 0; fi
  mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
  if [ "$(id -u)" = 0 ]; then
    echo "==> installing host prerequisites: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null
    apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "missing host prerequisites; run as root:" >&2
    echo "  apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
}

if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo not found: install Rust (https://rustup.rs) first" >&2
  exit 1
fi
export PATH="$PATH:/usr/sbin:/sbin"
