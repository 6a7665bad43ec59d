#!/usr/bin/env bash
# Install the system packages engagementd needs: redis-server and postgresql (required), wrk (benchmarks).
# With --test, also chromium (the test suite loads the live counts page in headless Chromium).
# Idempotent and quick when everything is present: apt-get runs only for what is missing.
set -euo pipefail

with_test=0
[ "${1:-}" = "--test" ] && with_test=1

have_pg_bin() {
    command -v "$1" >/dev/null 2>&1 && return 0
    compgen -G "/usr/lib/postgresql/*/bin/$1" >/dev/null
}

missing=()
command -v redis-server >/dev/null 2>&1 || [ -x /usr/bin/redis-server ] || missing+=(redis-server)
if ! have_pg_bin initdb || ! have_pg_bin pg_ctl || ! have_pg_bin postgres; then
    missing+=(postgresql)
fi
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
if [ "$with_test" -eq 1 ]; then
    command -v chromium >/dev/null 2>&1 || [ -x /usr/bin/chromium ] || missing+=(chromium)
fi

if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi

if [ "${EUID}" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "install-system-deps: installing ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    # Keep the packages' own services (a Redis on 6379, a cluster on 5432) from starting: we run our own.
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod +x /usr/sbin/policy-rc.d
        trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    fi
    apt-get update -qq
    # wrk is optional: install the required packages first so a missing wrk cannot block them.
    required=()
    for pkg in "${missing[@]}"; do [ "$pkg" = wrk ] || required+=("$pkg"); done
    if [ ${#required[@]} -gt 0 ]; then
        apt-get install -y -qq --no-install-recommends "${required[@]}"
    fi
    if [[ " ${missing[*]} " == *" wrk "* ]]; then
        apt-get install -y -qq --no-install-recommends wrk ||
            echo "install-system-deps: warning: could not install wrk (only needed by benchmarks)" >&2
    fi
    exit 0
fi

status=0
for pkg in "${missing[@]}"; do
    if [ "$pkg" = wrk ]; then
        echo "install-system-deps: warning: wrk is missing (only needed by benchmarks): apt-get install wrk" >&2
    else
        echo "install-system-deps: missing required package: $pkg (apt-get install $pkg)" >&2
        status=1
    fi
done
exit $status
