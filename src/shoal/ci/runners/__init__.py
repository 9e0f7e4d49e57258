"""Runner pools: one fresh VM per queued CI job, for GitHub Actions, Jenkins and Buildkite."""
