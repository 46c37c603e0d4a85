#!/bin/sh
# ros/console entrypoint: a login-free root shell on the console tty, again whenever it exits.
#
# CONSOLE_TTY names the tty; `auto` (the default) takes the kernel's console from sysfs. The
# container needs the host's /dev (a bind mount) to find it.
# This script is the container's init, which runc makes a session leader, so it cannot take the
# tty itself without `setsid` forking away from it. Its child is no group leader, so `setsid -c`
# starts the shell in a new session without forking and makes the tty its controlling terminal
# (stealing it if another session had it: the container is privileged), for job control and ^C.
# The shell runs in the foreground: in the background a non-interactive sh would start it with
# SIGINT ignored, and ash never un-ignores an inherited SIG_IGN, so ^C would be dead. The price:
# this script cannot handle SIGTERM while the shell runs, so the image's stop signal is SIGKILL.
tty="${CONSOLE_TTY:-auto}"
if [ "$tty" = auto ]; then
  # The kernel's preferred console is the last one it lists (console=tty0 console=ttyS0 → ttyS0):
  # a real tty, where /dev/console could not be a controlling terminal for job control.
  active="$(cat /sys/class/tty/console/active 2>/dev/null)"
  tty="/dev/${active##* }"
  [ "$tty" = /dev/ ] && tty=/dev/console
fi
if [ ! -c "$tty" ]; then
  echo "ros console: $tty is not a character device (set CONSOLE_TTY)" >&2
  exit 1
fi
cd "${HOME:-/root}" 2>/dev/null || cd /
while :; do
  setsid -c sh -l <"$tty" >"$tty" 2>&1
  # A shell that dies at once (a tty hang-up) must not spin.
  sleep 1
done
