"""The cloud gateway (channels, orders, refunds, reconciliation). Not built yet: see the open gateway issue."""
