"""ADE: an event-driven run/build orchestrator with exact, resumable event streams."""
