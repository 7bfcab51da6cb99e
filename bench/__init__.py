"""`make bench`: starts imagegate as separate processes on loopback and measures it."""
