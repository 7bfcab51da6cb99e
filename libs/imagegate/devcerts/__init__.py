"""A development CA and one certificate per service (`make certs`); never for production keys."""
