# A stand-in for the Actions runner's `./run.sh` with a JIT config, for the test guest (busybox
# sh and wget): what the real runner does at the boundary with GitHub, against tests/fakes/
# github.py. It reads the JIT config from ACTIONS_RUNNER_INPUT_JITCONFIG (as the real runner
# can), connects, waits for a job, "runs" it for FAKE_JOB_SECONDS, reports it done and exits: a
# JIT runner runs one job. It exits at once when GitHub has removed it (410).
config=$(printf '%s' "$ACTIONS_RUNNER_INPUT_JITCONFIG" | base64 -d) || exit 1
field() { printf '%s' "$config" | sed -n "s/.*\"$1\": *\"\{0,1\}\([^\",}]*\).*/\1/p"; }
url=$(field url)
id=$(field runner_id)
secret=$(field secret)
post() {
    wget -q -O - --header "Authorization: RunnerSecret $secret" --post-data "${2:-}" \
        "$url/_runner/$id/$1"
}
post connect >/dev/null || exit 1
echo "runner $SHOAL_RUNNER_NAME connected"
while :; do
    job=$(post acquire) || { echo "runner removed"; exit 0; }
    [ -n "$job" ] && break
    sleep 1
done
echo "running job $job"
sleep "${FAKE_JOB_SECONDS:-1}"
post complete "job=$job" >/dev/null || exit 1
echo "job $job done"
