"""Training IP-Adapters on the pack's own engine (see README, Training)."""
