#!/bin/sh
# A stand-in for `java -jar agent.jar -url "$JENKINS_URL" -name ... -secret ... -webSocket` (an
# inbound Jenkins agent) that speaks the fake Jenkins' agent endpoints (tests/fakes/jenkins.py)
# from a test guest: POSIX sh, busybox wget and sed.
#
# Reads JENKINS_URL (FAKE_JENKINS_URL, when set, wins: the fake as the guest reaches it),
# JENKINS_AGENT_NAME and JENKINS_SECRET. Connects, asks for a build every second, "runs" it
# (prints it, sleeps the build's seconds), reports it done, and waits for the next, as an inbound
# agent does, until its node is deleted or disconnected: then it exits 0. The secret goes in
# POST bodies written to a private temporary file, never on a command line.
set -u
: "${JENKINS_AGENT_NAME:?}" "${JENKINS_SECRET:?}"
url=${FAKE_JENKINS_URL:-${JENKINS_URL:?}}
url=${url%/}
umask 077
dir=$(mktemp -d) || exit 1
trap 'rm -rf "$dir"' EXIT
trap 'exit 143' TERM INT
printf 'name=%s&secret=%s' "$JENKINS_AGENT_NAME" "$JENKINS_SECRET" >"$dir/body"
me="/_fake/agent/$JENKINS_AGENT_NAME"

post() { # post PATH: the answer on stdout; status 0, 2 when the node is gone (404), else 1
    wget -q -O - --post-file "$dir/body" "$url$1" 2>"$dir/err" && return 0
    grep -q ' 404 ' "$dir/err" && return 2
    cat "$dir/err" >&2
    return 1
}

field() { printf '%s\n' "$answer" | sed -n "s/^$1=//p"; }

failures=0
failed() { # count a failed call; give up after 30 in a row
    failures=$((failures + 1))
    [ "$failures" -lt 30 ] || { echo "jenkins-agent: Jenkins does not answer" >&2; exit 1; }
    sleep 1
}

until post /_fake/agent/connect >/dev/null; do
    [ $? -eq 2 ] && { echo "jenkins-agent: no node $JENKINS_AGENT_NAME" >&2; exit 1; }
    failed
done
echo "jenkins-agent: $JENKINS_AGENT_NAME connected to $url"

while :; do
    answer=$(post "$me/poll")
    case $? in
    0) failures=0 ;;
    2) echo "jenkins-agent: node $JENKINS_AGENT_NAME deleted"; exit 0 ;;
    *) failed; continue ;;
    esac
    case $answer in
    disconnected) echo "jenkins-agent: disconnected"; exit 0 ;;
    build=*)
        build=$(field build) job=$(field job) number=$(field number)
        echo "jenkins-agent: running $job #$number"
        sleep "$(field seconds)"
        until post "$me/builds/$build/done" >/dev/null; do
            [ $? -eq 2 ] && { echo "jenkins-agent: node $JENKINS_AGENT_NAME deleted"; exit 0; }
            failed
        done
        failures=0
        echo "jenkins-agent: $job #$number done"
        ;;
    *) sleep 1 ;;
    esac
done
