"""Every HTTP route a worker serves: intake, blogs, sites (controls), ops (stats, health, metrics)."""
