"""What every stage uses, below the stages: settings helpers (no AiiDA import)."""
