"""Docker test support (owned by the sandbox work): the `docker` marker's skip logic."""
