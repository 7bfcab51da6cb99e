"""gRPC server kit shared by every imagegate service: errors, server factory, channels, auth."""
