# Shared by scripts/*: repo root, host prerequisites. Sourced, not run.
#
# Everything here prints to stderr: `scripts/run --exec` promises that its stdout is the guest
# command's output alone.
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
# Files (not commands) the build needs, and their package.
PREREQ_FILES=(
  "/usr/share/keyrings/debian-archive-keyring.gpg:debian-archive-keyring"
)
# Packages built from one source that must come from one suite at one version: qemu-utils from
# backports (10.x) breaks qemu-system-common 7.2, so installing qemu-system-x86 alone makes apt
# remove the newer qemu-utils (and qemu-img with it).
PREREQ_MATCHED=(qemu-system-x86 qemu-utils qemu-system-common)

say() { printf '%s\n' "$*" >&2; }

have_cmd() {
  command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/sbin/$1" ]
}

# Prints the packages whose command or file is missing, one per line, sorted.
missing_prereqs() {
  local entry
  {
    for entry in "${PREREQS[@]}"; do
      have_cmd "${entry%%:*}" || printf '%s\n' "${entry##*:}"
    done
    for entry in "${PREREQ_FILES[@]}"; do
      [ -e "${entry%%:*}" ] || printf '%s\n' "${entry##*:}"
    done
  } | sort -u
}

# The qemu packages as `pkg=version` words, all pinned to qemu-system-x86's candidate: one
# transaction from one suite, downgrading a newer qemu-utils rather than removing it.
matched_qemu_pins() {
  local want pkg
  want="$(apt-cache policy qemu-system-x86 2>/dev/null | awk '/Candidate:/ { print $2 }')"
  if [ -z "$want" ] || [ "$want" = "(none)" ]; then
    say "prerequisites: apt knows no candidate for qemu-system-x86 (is a Debian suite in apt's sources?)"
    return 1
  fi
  for pkg in "${PREREQ_MATCHED[@]}"; do printf '%s=%s\n' "$pkg" "$want"; done
}

# Checks that every prerequisite is there after an install; names each one still missing.
verify_prereqs() {
  local left
  left="$(missing_prereqs)"
  if [ -n "$left" ]; then
    say "prerequisites: still missing after apt-get install: $(echo $left)"
    say "  (apt may have removed a package to satisfy another; see the apt output above)"
    return 1
  fi
}

# ensure_prereqs [--check]: with --check only reports (exit 1 naming what is missing); else, as
# root, installs what is missing with apt (the qemu packages together at one version) and checks
# every command afterwards; not as root, prints the apt-get line and fails.
ensure_prereqs() {
  local check_only=0
  [ "${1:-}" = "--check" ] && check_only=1
  local missing
  mapfile -t missing < <(missing_prereqs)
  [ ${#missing[@]} -eq 0 ] && return 0
  local pkgs=() pins=() p out
  for p in "${missing[@]}"; do
    case " ${PREREQ_MATCHED[*]} " in *" $p "*) ;; *) pkgs+=("$p") ;; esac
  done
  case " ${missing[*]} " in
    *" qemu-system-x86 "* | *" qemu-utils "*)
      out="$(matched_qemu_pins)" || return 1
      [ -n "$out" ] && mapfile -t pins <<<"$out" ;;
  esac
  local words=("${pkgs[@]}" "${pins[@]}")
  if [ "$check_only" = 1 ] || [ "$(id -u)" != 0 ]; then
    say "missing host prerequisites: ${missing[*]}"
    say "  install them as root: apt-get install -y --allow-downgrades ${words[*]}"
    say "  (or run scripts/test, scripts/run or scripts/bench as root, which install them)"
    return 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  say "==> installing host prerequisites: ${missing[*]}"
  say "    apt-get update"
  apt-get update -q >&2 || { say "prerequisites: apt-get update failed"; return 1; }
  # The candidates may have moved with the update.
  if [ ${#pins[@]} -gt 0 ]; then
    out="$(matched_qemu_pins)" || return 1
    pins=()
    [ -n "$out" ] && mapfile -t pins <<<"$out"
    words=("${pkgs[@]}" "${pins[@]}")
  fi
  say "    apt-get install ${words[*]}"
  if ! apt-get install -y -q --no-install-recommends --allow-downgrades "${words[@]}" >&2; then
    say "prerequisites: apt-get install failed"
    return 1
  fi
  verify_prereqs
  say "==> host prerequisites installed"
}

if ! command -v cargo >/dev/null 2>&1; then
  say "cargo not found: install Rust (https://rustup.rs) first"
  exit 1
fi
export PATH="$PATH:/usr/sbin:/sbin"
