"""What stock kubectl (and other Kubernetes API clients) need from the API: discovery, Tables, OpenAPI v3."""
