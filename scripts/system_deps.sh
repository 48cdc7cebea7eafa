#!/bin/sh
# Install the system packages the course needs beyond Python: bubblewrap, the grader's sandbox.
# Does something only as root on a Debian-like system with apt-get and no `bwrap` yet; otherwise
# says why it did nothing and exits 0 (grading then runs unsandboxed, with a warning).
set -u
if command -v bwrap >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" != "0" ]; then
    echo "system_deps: bwrap (bubblewrap) missing and not root: ask an administrator for 'apt-get install bubblewrap'; grading will run unsandboxed" >&2
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "system_deps: bwrap (bubblewrap) missing and no apt-get here: install bubblewrap with this system's package manager; grading will run unsandboxed" >&2
    exit 0
fi
echo "system_deps: installing bubblewrap (the grader's sandbox) with apt-get" >&2
export DEBIAN_FRONTEND=noninteractive
if ! apt-get install -y -qq --no-install-recommends bubblewrap >/dev/null 2>&1; then
    # A fresh machine may have no package lists yet.
    apt-get update -qq >/dev/null 2>&1 || true
    apt-get install -y -qq --no-install-recommends bubblewrap >/dev/null 2>&1 \
        || echo "system_deps: could not install bubblewrap; grading will run unsandboxed" >&2
fi
command -v bwrap >/dev/null 2>&1 && echo "system_deps: $(bwrap --version)" >&2
exit 0
