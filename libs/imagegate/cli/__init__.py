"""The `imagegate` command: a client of the public gRPC API like any other."""
