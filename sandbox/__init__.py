"""Stand-ins for what a lab lacks (a HIS, payment channels), speaking the real wire protocols."""
