"""The auth flow: session state machine, runner, providers."""
