"""The git credential helper both runtimes give a fetch: the token from the environment, for
https to the GitHub host only (pure data; no I/O).

Git describes what it wants a credential for on stdin (``protocol=https``, ``host=github.com``,
one ``key=value`` a line, a blank line or EOF to end). The helper answers only for https to the
host in :data:`HOST_VARIABLE` (any case; a port is part of ``host`` and must match too): a clone
URL on any other host, an operator's or one planted in a job, never gets the token, whoever asks
for it. The token is read from :data:`TOKEN_VARIABLE`, so it is on no command line and in no URL.
"""

from __future__ import annotations

__all__ = ["CREDENTIAL_HELPER", "HOST_VARIABLE", "TOKEN_VARIABLE"]

TOKEN_VARIABLE = "SCHEDULER_GIT_TOKEN"
HOST_VARIABLE = "SCHEDULER_GIT_HOST"
CREDENTIAL_HELPER = (
    '!f() { test "$1" = get || exit 0; p= h=;'
    ' while IFS== read -r k v; do test -n "$k" || break;'
    ' case "$k" in protocol) p=$v;; host) h=$v;; esac; done;'
    ' test "$p" = https || exit 0;'
    ' test "$(printf %s "$h" | tr A-Z a-z)" = "$SCHEDULER_GIT_HOST" || exit 0;'
    ' echo username=x-access-token; echo "password=$SCHEDULER_GIT_TOKEN"; }; f'
)
