"""In-repo HTTP emulators of the hosted providers' APIs, for tests and offline demos."""
