"""The process layer: the CLI, the dev stack, the api server and the private servers tests and `make run`
start. The only code that wires the roles (api, consumer, flusher) together."""
