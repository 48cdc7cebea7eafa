#!/bin/sh
# Install the system packages the course needs beyond Python, by purpose:
#   sandbox  bubblewrap, the grader's sandbox (without it grading runs unsandboxed, with a warning)
#   browser  Debian's chromium and a CJK font, for the browser test of the book (skipped without them)
# Usage: sh scripts/system_deps.sh sandbox [browser]
# Does something only as root on a Debian-like system with apt-get, for what is missing;
# otherwise says why it did nothing and exits 0, so `make test` never fails here.
set -u
missing=""
for purpose in "$@"; do
    case "$purpose" in
        sandbox) command -v bwrap >/dev/null 2>&1 || missing="$missing bubblewrap" ;;
        browser)
            command -v chromium >/dev/null 2>&1 || missing="$missing chromium"
            dpkg -s fonts-noto-cjk >/dev/null 2>&1 || missing="$missing fonts-noto-cjk" ;;
        *) echo "system_deps: unknown purpose '$purpose' (use sandbox, browser)" >&2; exit 2 ;;
    esac
done
[ -n "$missing" ] || exit 0
if [ "$(id -u)" != "0" ]; then
    echo "system_deps: missing$missing and not root: ask an administrator for 'apt-get install$missing'" >&2
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "system_deps: missing$missing and no apt-get here: install them with this system's package manager" >&2
    exit 0
fi
echo "system_deps: installing$missing with apt-get" >&2
export DEBIAN_FRONTEND=noninteractive
# shellcheck disable=SC2086 # the package list is meant to split into words
if ! apt-get install -y -qq --no-install-recommends $missing >/dev/null 2>&1; then
    # A fresh machine may have no package lists yet.
    apt-get update -qq >/dev/null 2>&1 || true
    apt-get install -y -qq --no-install-recommends $missing >/dev/null 2>&1 \
        || echo "system_deps: could not install$missing; the tests that need them will skip or warn" >&2
fi
command -v bwrap >/dev/null 2>&1 && echo "system_deps: $(bwrap --version)" >&2
exit 0
