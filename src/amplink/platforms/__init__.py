"""Where remote processors live: simulated child processes, OpenAMP's Linux profile, hardware."""
