#!/bin/sh
# A stand-in for `buildkite-agent start --disconnect-after-job` that speaks the fake Buildkite's
# agent endpoints (tests/fakes/buildkite.py) from a test guest: POSIX sh, busybox wget and sed.
#
# Reads BUILDKITE_AGENT_TOKEN, BUILDKITE_AGENT_NAME, BUILDKITE_AGENT_TAGS (default queue=default),
# BUILDKITE_AGENT_ACQUIRE_JOB (optional) and FAKE_BUILDKITE_URL (the fake as the guest reaches
# it). Registers, asks for a job every second, "runs" it, finishes it, disconnects, exits 0.
# Told to stop, it disconnects and exits 0. Tokens go in POST bodies written to a private
# temporary file, never on a command line.
set -u
: "${BUILDKITE_AGENT_TOKEN:?}" "${BUILDKITE_AGENT_NAME:?}" "${FAKE_BUILDKITE_URL:?}"
umask 077
dir=$(mktemp -d) || exit 1
trap 'rm -rf "$dir"' EXIT
trap 'exit 143' TERM INT

quote() { printf '%s' "$1" | sed 's/[\\"]/\\&/g'; } # a JSON string's inside
post() { # post PATH BODY: the answer on stdout; non-zero when there is none
    printf '%s' "$2" >"$dir/body"
    wget -q -O - --header 'Content-Type: application/json' --post-file "$dir/body" \
        "$FAKE_BUILDKITE_URL$1"
}

register="{\"token\":\"$(quote "$BUILDKITE_AGENT_TOKEN")\",\
\"name\":\"$(quote "$BUILDKITE_AGENT_NAME")\",\
\"tags\":\"$(quote "${BUILDKITE_AGENT_TAGS:-queue=default}")\",\
\"acquire_job\":\"$(quote "${BUILDKITE_AGENT_ACQUIRE_JOB:-}")\"}"
tries=0
until answer=$(post /_fake/agent/register "$register"); do
    tries=$((tries + 1))
    [ "$tries" -lt 30 ] || { echo "buildkite-agent: cannot register" >&2; exit 1; }
    sleep 1
done
id=$(printf '%s\n' "$answer" | sed -n 's/^id=//p')
access=$(printf '%s\n' "$answer" | sed -n 's/^access_token=//p')
auth="{\"access_token\":\"$access\"}"
echo "buildkite-agent: registered $BUILDKITE_AGENT_NAME as $id"

failures=0
job=
while [ -z "$job" ]; do
    if answer=$(post "/_fake/agent/$id/ping" "$auth"); then
        failures=0
        case $answer in
        job=*) job=${answer#job=} ;;
        stop)
            echo "buildkite-agent: told to stop"
            post "/_fake/agent/$id/disconnect" "$auth" >/dev/null
            exit 0
            ;;
        *) sleep 1 ;;
        esac
    else
        failures=$((failures + 1))
        [ "$failures" -lt 30 ] || { echo "buildkite-agent: lost the server" >&2; exit 1; }
        sleep 1
    fi
done

echo "buildkite-agent: running job $job"
post "/_fake/agent/$id/jobs/$job/finish" "{\"access_token\":\"$access\",\"exit_status\":0}" \
    >/dev/null || exit 1
post "/_fake/agent/$id/disconnect" "$auth" >/dev/null
echo "buildkite-agent: job $job finished, disconnected"
